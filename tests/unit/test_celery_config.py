"""The Celery settings that make delivery safe for long, idempotent embedding jobs."""

from pipeline.jobs import create_celery
from pipeline.settings import VitrineSettings


def test_reliability_settings():
    settings = VitrineSettings(task_time_limit_s=900, task_soft_time_limit_s=800, queue="q1")
    conf = create_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (800, 900)
    assert conf.task_default_queue == "q1"
    # longer than the longest task plus the longest retry back-off (300 s)
    assert conf.broker_transport_options["visibility_timeout"] >= 900 + 300


def test_tasks_are_registered_under_stable_names():
    import workers.tasks  # noqa: F401  (registers the tasks on the module-level app)
    from pipeline.jobs import DELETE_TASK, INDEX_TASK
    from workers.app import app

    assert {INDEX_TASK, DELETE_TASK} <= set(app.tasks)
