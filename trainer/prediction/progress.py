"""The progress lines of a prediction run: the current video, its frames and fps, and the totals."""

from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 5.0


class Progress:
    """Prints a line every few seconds: the current video, frames and fps, and the totals."""

    def __init__(self, num_videos: int, every_s: float = PROGRESS_EVERY_S):
        self.num_videos, self.every_s = num_videos, every_s
        self.started = self._last = time.monotonic()
        self.total_frames = 0
        self.videos_done = 0
        self._video, self._video_index, self._video_frames, self._video_started = "", 0, 0, self.started

    def start_video(self, index: int, name: str) -> None:
        self._video, self._video_index, self._video_frames = name, index, 0
        self._video_started = time.monotonic()

    def frame(self) -> None:
        self._video_frames += 1
        self.total_frames += 1
        if self.every_s > 0 and self.total_frames % 16 == 0 and time.monotonic() - self._last >= self.every_s:
            self._print()

    def end_video(self) -> None:
        self.videos_done += 1
        self._print()

    def _print(self) -> None:
        now = time.monotonic()
        self._last = now
        video_fps = self._video_frames / max(now - self._video_started, 1e-9)
        total_fps = self.total_frames / max(now - self.started, 1e-9)
        print(f"[predict] video {self._video_index}/{self.num_videos} {self._video}: {self._video_frames} frames "
              f"({video_fps:.1f} fps); all: {self.total_frames} frames, {self.videos_done}/{self.num_videos} videos "
              f"done in {now - self.started:.0f}s ({total_fps:.1f} fps)", file=sys.stderr, flush=True)
