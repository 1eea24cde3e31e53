"""Video in and out (PyAV): `process_video` runs a per-frame function over a clip, keeping its timing, size,
rotation, colour range, audio and subtitles; resumable by chunks. `rainkit derain` and `rainkit generate` use
it for video inputs."""

from rainkit.video.pipeline import (DEFAULT_CHUNK_FRAMES, DEFAULT_CODEC, DEFAULT_CRF, VIDEO_SUFFIXES, EncodeSettings,
                                    FrameReader, VideoInfo, VideoResult, is_video_name, probe_video, process_video,
                                    video_output_suffix)

__all__ = ["DEFAULT_CHUNK_FRAMES", "DEFAULT_CODEC", "DEFAULT_CRF", "VIDEO_SUFFIXES", "EncodeSettings", "FrameReader", "VideoInfo",
           "VideoResult", "is_video_name", "probe_video", "process_video", "video_output_suffix"]
