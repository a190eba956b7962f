"""The Celery settings that make delivery safe for long, idempotent embedding jobs."""

import pytest
from pydantic import ValidationError

from pipeline.jobs import create_celery, redelivery_bound_s
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


def test_redelivery_after_a_dead_worker_is_bounded_and_covers_retry_waits():
    settings = VitrineSettings(task_time_limit_s=360, task_retry_backoff_max_s=300)
    options = create_celery(settings).conf.broker_transport_options
    # a job is held unacknowledged through its retry wait and its run: both fit
    assert options["visibility_timeout"] == 360 + 300 + 60
    assert options["unacked_restore_interval"] == 10 and options["unacked_restore_throttle"] == 1
    assert redelivery_bound_s(settings) == 730  # minutes, not kombu's default hour


def test_visibility_timeout_can_be_set_but_not_below_a_run():
    settings = VitrineSettings(task_time_limit_s=10, visibility_timeout_s=12)
    assert create_celery(settings).conf.broker_transport_options["visibility_timeout"] == 12
    with pytest.raises(ValidationError, match="visibility_timeout_s must exceed"):
        VitrineSettings(task_time_limit_s=10, visibility_timeout_s=10)


def test_unacked_jobs_are_kept_per_queue():
    """Another queue's consumers sweep with their own visibility timeout: never ours."""
    options = create_celery(VitrineSettings(queue="q1")).conf.broker_transport_options
    assert options["unacked_key"] == "q1.unacked"
    assert options["unacked_index_key"] == "q1.unacked_index"
    assert options["unacked_mutex_key"] == "q1.unacked_mutex"


def test_pool_processes_get_time_to_load_the_model():
    conf = create_celery(VitrineSettings(worker_proc_alive_timeout_s=45)).conf
    assert conf.worker_proc_alive_timeout == 45
    assert VitrineSettings().worker_proc_alive_timeout_s > 4  # Celery's default kills a CPU load


@pytest.mark.parametrize(
    ("url", "tls"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://127.0.0.1:6380/0?ssl_cert_reqs=required", True),
    ],
)
def test_the_broker_runs_vitrines_redis_transport_and_keeps_tls_options(url, tls):
    import ssl

    from pipeline.broker import Transport

    connection = create_celery(VitrineSettings(redis_url=url)).connection_for_write()
    assert connection.get_transport_cls() is Transport
    assert (connection.port, connection.virtual_host) == ((6380, "0") if tls else (6379, "0"))
    assert (connection.ssl or {}).get("ssl_cert_reqs") == (ssl.CERT_REQUIRED if tls else None)
