"""Celery: queues, task outcomes, runtimes, workers and the event stream the exporter follows."""
from .common import (BAD, NAMESPACE, OK, WARN, Board, Q, agg, heatmap_panel, label_variable, rate, sel,
                     standard_variables, stat_panel, steps, table_panel, timeseries_panel, up_down)

QUEUE = 'queue=~"$queue"'
NAME = 'name=~"$name"'
STATES = ("received", "started", "succeeded", "failed", "retried", "revoked", "rejected")


def _quantile(q, metric, by):
    legend = f"p{round(q * 100)}" + (" {{name}}" if "name" in by else "")
    return Q(f"histogram_quantile({q}, {rate(metric + '_bucket', NAME, by=by)})", legend)


def event_stream_panels():
    """The health of the Celery event stream; shared with the exporter dashboard."""
    return [
        stat_panel(
            "Event stream",
            "Whether the exporter is subscribed to Celery's event channels in Redis. While DOWN, task counts, "
            "runtimes and worker heartbeats stop: events sent meanwhile are lost for good.",
            [Q(agg("max", "celery_event_stream_up"))], "none", mappings=up_down(), thresholds=steps(BAD, (1, OK)),
            color_background=True, runbooks=["BookedBarberCeleryEventStreamDown"]),
        timeseries_panel(
            "Event messages per second, by result",
            "Event messages received from Redis per second: decoded, malformed (not valid Celery events) or "
            "ignored (event types the exporter does not use).",
            [Q(rate("celery_event_messages_total", by="result"), "{{result}}")], "ops", w=10, stack=True),
        timeseries_panel(
            "Event stream problems",
            "Events lost or not attributed, per 5 minutes: subscriptions lost and re-made (events meanwhile are "
            "lost), unfinished tasks forgotten because too many were tracked, events of tasks never seen "
            "received (name unknown), and events of workers past the worker cap. All should stay at 0.",
            [Q(rate("celery_event_stream_reconnects_total", window="5m", fn="increase"), "reconnects"),
             Q(rate("celery_event_tracking_evictions_total", window="5m", fn="increase"), "tracking evictions"),
             Q(rate("celery_event_unknown_task_events_total", window="5m", fn="increase"), "unknown task events"),
             Q(rate("celery_event_workers_refused_total", window="5m", fn="increase"), "workers refused")],
            "short", w=10, decimals=0, thresholds=steps(OK, (1, WARN)), threshold_lines=True),
        timeseries_panel(
            "Tasks tracked by uuid",
            "Tasks the exporter remembers between their task-received and final event, to name their later "
            "events. Stays near the number of tasks in flight; at --celery.max-tracked-tasks the oldest are "
            "forgotten.",
            [Q(agg("sum", "celery_event_tracked_tasks"), "tracked")], "short", w=24, h=6, decimals=0),
    ]


def board() -> Board:
    variables = standard_variables() + [
        label_variable("queue", "Queue", "celery_queue_length", "Celery queues (Redis lists) of the broker."),
        label_variable("name", "Task", "celery_task_received_total", "Celery task names seen by the workers."),
    ]
    b = Board("bookedbarber-celery", "BookedBarber Celery",
              "BookedBarber's background work (notifications, reminders, payouts, reports) on Celery with a "
              "Redis broker: queue depth and waiting time, task outcomes and runtimes from Celery's own event "
              "stream, worker heartbeats.",
              variables=variables, tags=["celery"])
    b.row(
        "Queues",
        timeseries_panel(
            "Messages waiting, by queue",
            "Tasks waiting in each queue for a worker (all priority levels together). A queue that keeps "
            "growing is not drained fast enough, or by no worker at all.",
            [Q(agg("sum", "celery_queue_length", QUEUE, by="queue"), "{{queue}}")], "short", w=8, decimals=0,
            runbooks=["BookedBarberCeleryQueueBacklog", "BookedBarberCeleryQueueNoWorker"]),
        timeseries_panel(
            "Oldest waiting message, by queue",
            "How long the message at the head of each queue has waited; 0 when the queue is empty. Urgent "
            "notifications should wait seconds, bulk queues may wait longer.",
            [Q(agg("max", "celery_queue_oldest_message_age_seconds", QUEUE, by="queue"), "{{queue}}")], "s", w=8,
            thresholds=steps(OK, (120, WARN), (1800, BAD)), runbooks=["BookedBarberCeleryQueueLatencyHigh"]),
        timeseries_panel(
            "Reserved by workers (unacknowledged), by queue",
            "Tasks a worker has fetched but not yet acknowledged: running, or prefetched and waiting in the "
            "worker, or scheduled for later (ETA/countdown).",
            [Q(agg("sum", "celery_queue_unacked", QUEUE, by="queue"), "{{queue}}")], "short", w=8, decimals=0),
        timeseries_panel(
            "Tasks sent per second, by queue",
            "Tasks the application published to each queue per second (producers must send task-sent events).",
            [Q(rate("celery_task_sent_total", f"{QUEUE}, {NAME}", by="queue"), "{{queue}}")], "ops", w=16,
            stack=True),
        stat_panel(
            "Queues past the cap",
            "Queues beyond --celery.max-queues, counted together as queue=\"__overflow__\"; 0 normally.",
            [Q(agg("sum", "celery_queues_untracked"))], "short", w=8, h=8, decimals=0,
            thresholds=steps(OK, (1, WARN))),
    )
    b.row(
        "Tasks",
        timeseries_panel(
            "Task events per second, by state",
            "Task events per second for the selected tasks: received by a worker, started, succeeded, failed, "
            "retried, revoked, rejected.",
            [Q(rate(f"celery_task_{state}_total", NAME), state) for state in STATES], "ops", w=24),
        timeseries_panel(
            "Succeeded per second, by task",
            "Tasks that finished successfully, per second, over the last 5 minutes.",
            [Q(agg("sum", "namespace_name:celery_task_succeeded:rate5m", NAME, by="name", base=NAMESPACE),
               "{{name}}")], "ops", stack=True),
        timeseries_panel(
            "Failed per second, by task",
            "Tasks that raised an exception, per second, over the last 5 minutes (retries not counted).",
            [Q(agg("sum", "namespace_name:celery_task_failed:rate5m", NAME, by="name", base=NAMESPACE),
               "{{name}}")], "ops", stack=True, runbooks=["BookedBarberCeleryTaskFailureRatioHigh"]),
        timeseries_panel(
            "Failure ratio, by task",
            "Share of each task's finished runs that failed over the last 5 minutes. An alert fires above 10 % "
            "(with at least 20 runs).",
            [Q(sel("namespace_name:celery_task_failure:ratio_rate5m", NAME, base=NAMESPACE), "{{name}}")],
            "percentunit", max=1, thresholds=steps(OK, (0.05, WARN), (0.1, BAD)), threshold_lines=True,
            runbooks=["BookedBarberCeleryTaskFailureRatioHigh"]),
        timeseries_panel(
            "Retries per second, by task",
            "Tasks that asked to be retried (for example after a timeout talking to Stripe or an SMS "
            "provider), per second.",
            [Q(rate("celery_task_retried_total", NAME, by="name"), "{{name}}")], "ops", stack=True),
    )
    b.row(
        "Runtime and waiting",
        timeseries_panel(
            "Runtime percentiles",
            "How long the selected tasks take to run in the worker: median, 95th and 99th percentile.",
            [_quantile(q, "celery_task_runtime_seconds", "le") for q in (0.5, 0.95, 0.99)], "s"),
        heatmap_panel(
            "Runtime distribution",
            "How many of the selected tasks finished in each runtime bucket, over time: slow outliers show as "
            "cells high up.",
            Q(rate("celery_task_runtime_seconds_bucket", NAME, by="le", fn="increase"), "{{le}}", heatmap=True),
            "s"),
        timeseries_panel(
            "95th percentile runtime, by task",
            "95th percentile runtime of each task. An alert fires when it doubles against the previous day.",
            [_quantile(0.95, "celery_task_runtime_seconds", "name, le")], "s",
            runbooks=["BookedBarberCeleryTaskRuntimeRegression"]),
        timeseries_panel(
            "95th percentile wait in the worker, by task",
            "Time between a worker receiving a task and starting it (waiting for a free process, or for its "
            "ETA). Long waits with idle queues mean the worker prefetches more than it can run.",
            [_quantile(0.95, "celery_task_wait_seconds", "name, le")], "s"),
    )
    b.row(
        "Workers",
        stat_panel(
            "Workers online",
            "Workers whose heartbeats arrive on time (within twice their interval).",
            [Q(agg("sum", "celery_worker_up"))], "short", w=4, h=8, decimals=0, thresholds=steps(BAD, (1, OK)),
            runbooks=["BookedBarberCeleryWorkerDown"]),
        table_panel(
            "Worker heartbeats",
            "Each worker the exporter has heard of, UP while its heartbeats arrive on time.",
            Q(agg("max", "celery_worker_up", by="worker"), table=True), "none", w=8,
            rename={"Value": "heartbeat"}, mappings=up_down()),
        timeseries_panel(
            "Tasks running, by worker",
            "Tasks each worker is executing, from its heartbeats. Constantly at its concurrency means the "
            "worker is saturated.",
            [Q(agg("sum", "celery_worker_tasks_active", by="worker"), "{{worker}}")], "short", decimals=0),
    )
    b.row("Event stream health", *event_stream_panels())
    return b
