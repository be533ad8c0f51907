"""BookedBarber-like Celery tasks for the demo and the tests.

The broker comes from BBX_BROKER_URL (default redis://127.0.0.1:6379/0).
Events are on as BookedBarber's manifests turn them on: workers run with
-E and producers set task_send_sent_event.
"""
import json
import os
import random
import time

from celery import Celery

app = Celery("bookedbarber", broker=os.environ.get("BBX_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_ignore_result=True,
    task_default_queue="default",
    task_routes={
        "notifications.send_urgent_sms": {"queue": "urgent_notifications"},
        "notifications.*": {"queue": "notifications"},
        "marketing.*": {"queue": "marketing"},
    },
    # BBX_TRANSPORT_OPTIONS (JSON) lets the tests try kombu's other layouts:
    # global_keyprefix, sep, priority_steps.
    broker_transport_options={"queue_order_strategy": "priority",
                              **json.loads(os.environ.get("BBX_TRANSPORT_OPTIONS", "{}"))},
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# The demo sets BBX_FAILURE_RATE so that some tasks fail at random; the
# tests leave it at 0 so that outcomes are exactly as scripted.
FAILURE_RATE = float(os.environ.get("BBX_FAILURE_RATE", "0"))


def maybe_fail(what):
    if FAILURE_RATE and random.random() < FAILURE_RATE:
        raise RuntimeError(f"{what}: provider unavailable")


@app.task(name="notifications.send_appointment_reminder")
def send_appointment_reminder(appointment_id):
    time.sleep(random.uniform(0.005, 0.03))
    maybe_fail("reminder")
    return {"appointment_id": appointment_id, "sent": True}


@app.task(name="notifications.send_urgent_sms")
def send_urgent_sms(appointment_id):
    time.sleep(random.uniform(0.005, 0.02))
    maybe_fail("sms")
    return {"appointment_id": appointment_id}


@app.task(name="reports.generate_daily_revenue")
def generate_daily_revenue(shop_id):
    """Always fails: stands for a report job with a bug."""
    time.sleep(0.01)
    raise ValueError(f"no revenue data for shop {shop_id}")


@app.task(bind=True, name="payments.sync_stripe_payout", max_retries=5)
def sync_stripe_payout(self, payout_id, fail_times=2):
    """Asks for a retry `fail_times` times, then succeeds."""
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.2)
    return {"payout_id": payout_id}


@app.task(name="marketing.send_campaign_email")
def send_campaign_email(client_id):
    time.sleep(random.uniform(0.01, 0.05))
    return {"client_id": client_id}


@app.task(name="maintenance.cleanup_expired_holds")
def cleanup_expired_holds(seconds=0.05):
    time.sleep(seconds)
    return "ok"
