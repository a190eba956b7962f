"""``pipeline.jobs.create_celery``: the app is built from the settings passed in, nothing else."""

from pipeline.jobs import TASKS_MODULE, create_celery
from pipeline.settings import VitrineSettings


def test_app_carries_its_settings_and_their_redis():
    settings = VitrineSettings(redis_url="redis://127.0.0.1:6390/3")
    app = create_celery(settings)
    assert app.settings is settings
    assert app.conf.broker_url == app.conf.result_backend == "redis://127.0.0.1:6390/3"


def test_only_workers_load_the_task_module():
    settings = VitrineSettings()
    assert list(create_celery(settings).conf.imports) == []
    assert list(create_celery(settings, worker=True).conf.imports) == [TASKS_MODULE]
