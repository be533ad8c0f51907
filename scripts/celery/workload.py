"""Scripted Celery workloads of known size, for the tests and the demo.

  python workload.py scripted        # the event test's workload; prints its ground truth as JSON
  python workload.py enqueue QUEUE PRIORITY:COUNT ...   # no worker needed; prints nothing
  python workload.py eta QUEUE COUNT SECONDS             # tasks a worker holds (unacked) until their ETA
  python workload.py demo            # endless BookedBarber-like traffic
"""
import json
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

from kombu.exceptions import OperationalError

from bbtasks import (app, cleanup_expired_holds, generate_daily_revenue, send_appointment_reminder,
                     send_campaign_email, send_urgent_sms, sync_stripe_payout)

EVENTS = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked")


def scripted():
    truth = {}

    def expect(name, queue, **counts):
        row = truth.setdefault(name, {"queue": queue, **{e: 0 for e in EVENTS}})
        for k, v in counts.items():
            row[k] += v

    # Reminders on two queues, with every priority.
    for i in range(20):
        send_appointment_reminder.apply_async((i,), priority=i % 10)
    expect("notifications.send_appointment_reminder", "notifications",
           sent=20, received=20, started=20, succeeded=20)
    for i in range(10):
        send_urgent_sms.apply_async((i,), priority=9 - i % 10)
    expect("notifications.send_urgent_sms", "urgent_notifications",
           sent=10, received=10, started=10, succeeded=10)
    # Failures.
    for i in range(5):
        generate_daily_revenue.delay(i)
    expect("reports.generate_daily_revenue", "default", sent=5, received=5, started=5, failed=5)
    # Two retries each, then success: every attempt is sent, received and started.
    for i in range(3):
        sync_stripe_payout.delay(i, fail_times=2)
    expect("payments.sync_stripe_payout", "default",
           sent=9, received=9, started=9, retried=6, succeeded=3)
    # Revoked before the worker sees them, and one already expired: the
    # worker drops them without task-received.
    revoked_ids = [str(uuid.uuid4()) for _ in range(2)]
    # A broadcast reaches only workers already listening: repeat it until
    # the worker confirms it holds both revocations.
    for _ in range(30):
        app.control.revoke(revoked_ids)
        replies = app.control.inspect(timeout=1.0).revoked() or {}
        if any(set(revoked_ids) <= set(ids) for ids in replies.values()):
            break
    else:
        sys.exit("no worker confirmed the revocations")
    for tid in revoked_ids:
        send_campaign_email.apply_async((1,), task_id=tid)
    send_campaign_email.apply_async((2,), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    expect("marketing.send_campaign_email", "marketing", sent=3, revoked=3)
    print(json.dumps(truth, sort_keys=True))


def enqueue(queue, specs):
    for spec in specs:
        priority, count = (int(x) for x in spec.split(":"))
        for i in range(count):
            # Routed by name to the queue asked for, whatever the task.
            cleanup_expired_holds.apply_async((0.01,), queue=queue, priority=priority)


def eta(queue, count, seconds):
    for i in range(count):
        cleanup_expired_holds.apply_async((0.01,), queue=queue, countdown=seconds)


def demo():
    i = 0
    while True:
        i += 1
        try:
            demo_step(i)
        except OperationalError as e:
            # The broker is gone (restarted, say): a real producer keeps
            # serving and sends again later, and so does the demo.
            print(f"broker unreachable ({e}); trying again in 2 s", file=sys.stderr, flush=True)
            time.sleep(2)
            continue
        time.sleep(0.2)


def demo_step(i):
    send_appointment_reminder.apply_async((i,), priority=i % 10)
    if i % 3 == 0:
        send_urgent_sms.apply_async((i,), priority=9)
    if i % 5 == 0:
        send_campaign_email.delay(i)
    if i % 17 == 0:
        sync_stripe_payout.delay(i, fail_times=1)
    if i % 23 == 0:
        generate_daily_revenue.delay(i)
    if i % 11 == 0:
        cleanup_expired_holds.delay(0.5)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "scripted":
        scripted()
    elif command == "enqueue":
        enqueue(sys.argv[2], sys.argv[3:])
    elif command == "eta":
        eta(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif command == "demo":
        demo()
    else:
        sys.exit(__doc__)
