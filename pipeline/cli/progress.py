"""A catalogue import with a live progress bar (done products; enqueued and failed)."""

from __future__ import annotations

import sys

from tqdm import tqdm

from pipeline.ingest.importer import ImportPlan, ImportProgress, ImportResult, run_import
from pipeline.jobs import create_celery
from pipeline.settings import VitrineSettings


def import_with_progress(
    settings: VitrineSettings, plan: ImportPlan, *, batch_size: int, wait: bool, timeout_s: float
) -> ImportResult:
    """Run an import plan with a live progress bar on stderr."""
    with tqdm(total=len(plan.products), unit="product", desc="ingest", file=sys.stderr) as bar:
        last_shown: list[tuple[int, int, int]] = [(-1, -1, -1)]

        def show(progress: ImportProgress) -> None:
            state = (progress.enqueued, progress.done, progress.failed)
            if state == last_shown[0]:
                return
            last_shown[0] = state
            bar.set_postfix(enqueued=progress.enqueued, failed=progress.failed, refresh=False)
            bar.update(progress.done - bar.n)

        return run_import(
            create_celery(settings),
            plan,
            batch_size=batch_size,
            wait=wait,
            timeout_s=timeout_s,
            on_progress=show,
        )
