"""One progress display for epochs and trials."""

from __future__ import annotations


class Progress:
    """A tqdm bar when tqdm is installed and `enabled`; lines are printed either way."""

    def __init__(self, total: int, desc: str, enabled: bool, **tqdm_kwargs):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, **tqdm_kwargs)
            except ImportError:
                pass

    @property
    def active(self) -> bool:
        return self.bar is not None

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
