"""Name-hash splits: the held-out real photos and a trainer's validation share."""

from __future__ import annotations

from rainkit.data.splits import HELD_OUT_FRACTION, hash_fraction, is_held_out, is_validation, split_held_out


def test_held_out_share_depends_on_the_relative_name_only(tmp_path):
    names = [f"source{i % 3}/photo{i}.jpg" for i in range(2000)]
    held = [n for n in names if is_held_out(n)]
    assert abs(len(held) / len(names) - HELD_OUT_FRACTION) < 0.03
    for root in (tmp_path / "a", tmp_path / "elsewhere" / "b"):
        files = [root / n for n in reversed(names)]  # any order, any root
        training, held_files = split_held_out(files, root)
        assert [p.relative_to(root).as_posix() for p in held_files] == sorted(held)
        assert len(training) + len(held_files) == len(names)


def test_validation_split_is_keyed_by_seed_and_not_the_held_out_one():
    names = [f"x/{i}.png" for i in range(1000)]
    by_seed = [{n for n in names if is_validation(n, seed, 0.1)} for seed in (0, 1)]
    assert by_seed[0] != by_seed[1]
    assert by_seed[0] != {n for n in names if hash_fraction(f"held-out:{n}") < 0.1}
    assert 0 <= hash_fraction("anything") < 1 and hash_fraction("a") == hash_fraction("a")
