"""The progress lines of a prediction run: the videos in progress, their frames and fps, and the totals."""

from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 5.0


class Progress:
    """Prints a line every few seconds: the video in progress (or how many, with ``--workers``), frames and fps, and
    the totals."""

    def __init__(self, num_videos: int, every_s: float = PROGRESS_EVERY_S):
        self.num_videos, self.every_s = num_videos, every_s
        self.started = self._last = time.monotonic()
        self.total_frames = 0
        self.videos_done = 0
        self.active: dict[int, list] = {}  # video number -> [name, frames, start time]
        self._current = 0

    def start_video(self, index: int, name: str) -> None:
        self.active[index] = [name, 0, time.monotonic()]
        self._current = index

    def frame(self, index: int | None = None) -> None:
        self.active[self._current if index is None else index][1] += 1
        self.total_frames += 1
        if self.every_s > 0 and self.total_frames % 16 == 0 and time.monotonic() - self._last >= self.every_s:
            self._print()

    def end_video(self, index: int | None = None) -> None:
        self.videos_done += 1
        index = self._current if index is None else index
        ended = self.active.pop(index, None)
        self._print([(index, ended)] if ended is not None else None)

    def _print(self, shown: list | None = None) -> None:
        now = time.monotonic()
        self._last = now
        total_fps = self.total_frames / max(now - self.started, 1e-9)
        shown = list(self.active.items()) if shown is None else shown
        if len(shown) == 1:
            index, (name, frames, started) = shown[0]
            which = (f"video {index}/{self.num_videos} {name}: {frames} frames "
                     f"({frames / max(now - started, 1e-9):.1f} fps)")
        else:
            which = f"{len(shown)} videos in progress"
        print(f"[predict] {which}; all: {self.total_frames} frames, {self.videos_done}/{self.num_videos} videos "
              f"done in {now - self.started:.0f}s ({total_fps:.1f} fps)", file=sys.stderr, flush=True)
