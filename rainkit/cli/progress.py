"""The progress display of the batch commands (`derain`, `generate`, `segment`, `detect`): a bar over the files with the
current file's name, a second bar over the tiles of a large image while it runs, and each failure
printed as it happens (the batch goes on; the summary comes at the end)."""

from __future__ import annotations

from pathlib import Path


class BatchProgress:
    """A transient Rich progress display whose methods are the batch functions' callbacks."""

    def __init__(self, console, label: str):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[current]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=True)
        self.label = label
        self._files = None
        self._tiles = None

    def __enter__(self) -> "BatchProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def on_start(self, total: int) -> None:
        self._files = self.progress.add_task(self.label, total=total, current="")

    def on_tile(self, done: int, total: int, plan: str | None = None) -> None:
        """Tiles of a large image; `plan` says how it is run (e.g. "tiles of 726 px, 2 passes, 3 GiB cap")."""
        self._sub(f"  {plan}" if plan else "  tiles", done, total)

    def on_frame(self, done: int, total: int) -> None:
        """Frames of a video: the bar shows frames per second and the time left."""
        self._sub("  frames", done, total)

    def _sub(self, label: str, done: int, total: int) -> None:
        if self._tiles is None:
            self._tiles = self.progress.add_task(label, total=total, current="")
        self.progress.update(self._tiles, completed=done, total=total)
        task = next((t for t in self.progress.tasks if t.id == self._tiles), None)
        if label.strip() == "frames" and task is not None and task.speed:
            self.progress.update(self._tiles, current=f"{task.speed:.1f} fps")

    def on_progress(self, item, index: int, total: int) -> None:
        from rich.markup import escape

        if self._tiles is not None:
            self.progress.remove_task(self._tiles)
            self._tiles = None
        self.progress.update(self._files, completed=index, current=Path(item.input).name)
        if item.status == "failed":
            self.progress.console.print(f"[red]failed[/red] {escape(item.error or '')}", highlight=False,
                                        soft_wrap=True)
        elif item.note:
            self.progress.console.print(f"[yellow]redone[/yellow] {escape(item.note)}", highlight=False,
                                        soft_wrap=True)


def print_failures(result) -> None:
    """The end-of-batch list: each failure (file and reason) on one line, after the summary."""
    from rich.markup import escape

    from rainkit.cli.app import console

    for item in result.failed:
        console.print(f"[red]failed:[/red] {escape(item.error or item.input)}", highlight=False, soft_wrap=True)
