"""BookedBarber business: bookings, conversion, payments, money and users, for shop owners and product people."""
from .common import (BAD, INFO, NAMESPACE, OK, WARN, Board, Q, agg, bargauge_panel, sel, stat_panel, steps,
                     timeseries_panel)

CREATED_1H = sel("namespace:bookedbarber_appointments_created:increase1h", base=NAMESPACE)


def _per_day(metric):
    """Sum of a counter's increase over each day (the panel's $__interval is 1d)."""
    return f"sum(increase({sel(metric)}[$__interval]))"


def _last_24h(metric):
    return f"sum(increase({sel(metric)}[1d]))"


def board() -> Board:
    b = Board("bookedbarber-business", "BookedBarber business",
              "Bookings, conversion, payments, revenue and users, read from BookedBarber's database by the "
              "exporter (test data excluded). For shop owners and product people; refreshed every minute.",
              tags=["business"], time_from="now-24h")
    b.row(
        "Bookings",
        timeseries_panel(
            "Bookings per hour, by channel",
            "New bookings per hour: appointments (booked by clients or staff) and bookings made through the "
            "guest checkout without an account. Measured over the last 5 minutes and scaled to an hour, so it "
            "reacts quickly.",
            [Q(agg("sum", "namespace:bookedbarber_appointments_created:rate5m", base=NAMESPACE) + " * 3600",
               "appointments"),
             Q(agg("sum", "namespace:bookedbarber_guest_bookings_created:rate5m", base=NAMESPACE) + " * 3600",
               "guest checkout")],
            "short"),
        timeseries_panel(
            "Bookings in the past hour: this week against last week",
            "Bookings created in the hour before each point in time, and the same for one week earlier. "
            "An alert fires when this week falls below half of last week (with at least 20 last week).",
            [Q(CREATED_1H, "this week"), Q(f"{CREATED_1H} offset 1w", "last week")],
            "short", decimals=0, runbooks=["BookedBarberBookingsDrop"]),
        bargauge_panel(
            "Bookings by status",
            "Every real booking by its current status: scheduled and pending (waiting), confirmed, in progress, "
            "completed, cancelled, no-show, and those needing rescheduling or in conflict.",
            [Q(agg("sum", "bookedbarber_appointments", by="status"), "{{status}}")], "short", decimals=0),
        timeseries_panel(
            "Past hour's bookings by current status",
            "Bookings created in the last hour, by the status they have now: shows how many new bookings get "
            "confirmed and how many are cancelled soon after.",
            [Q(agg("sum", "bookedbarber_appointments_recent", by="status"), "{{status}}")],
            "short", w=8, stack=True, decimals=0),
        timeseries_panel(
            "Booking conversion",
            "Of the bookings created in the last hour, the share that is now confirmed, in progress or completed.",
            [Q(sel("namespace:bookedbarber_booking_conversion:ratio", base=NAMESPACE), "conversion")],
            "percentunit", w=8, max=1),
        stat_panel(
            "Upcoming bookings, next 24 h",
            "Bookings that start in the next 24 hours and are still active (not cancelled or finished): "
            "tomorrow's workload for the shops.",
            [Q(agg("sum", "bookedbarber_appointments_upcoming"))], "short", w=6, decimals=0, graph=True),
        stat_panel(
            "Pending bookings",
            "Bookings waiting in status pending (for example awaiting the shop's or the payment's confirmation).",
            [Q(agg("sum", "bookedbarber_appointments", 'status="pending"'))], "short", w=6, decimals=0,
            graph=True),
        stat_panel(
            "Oldest pending booking",
            "How long the oldest booking still in status pending has been waiting since it was created; 0 when "
            "none is pending. Hours here mean a client is left without an answer.",
            [Q(agg("max", "bookedbarber_appointment_pending_oldest_age_seconds"))], "s", w=6,
            thresholds=steps(OK, (1800, WARN), (7200, BAD)), runbooks=["BookedBarberBookingsStuckPending"]),
        stat_panel(
            "Past-due bookings never closed",
            "Bookings still scheduled or confirmed whose start time passed between 2 hours and 7 days ago: "
            "nobody marked them completed, no-show or cancelled. Keeps reports and payouts honest; not urgent.",
            [Q(agg("sum", "bookedbarber_appointments_past_due"))], "short", w=6, decimals=0,
            thresholds=steps(OK, (1, INFO), (50, WARN))),
    )
    b.row(
        "Payments",
        bargauge_panel(
            "Payments by status",
            "Every payment by its current status: pending, completed, failed, refunded, partially refunded, "
            "disputed.",
            [Q(agg("sum", "bookedbarber_payments", by="status"), "{{status}}")], "short", decimals=0),
        timeseries_panel(
            "Payments updated in the last 15 minutes, by status",
            "Payments whose status changed in the last 15 minutes, by the status they reached.",
            [Q(agg("sum", "bookedbarber_payments_recent", by="status"), "{{status}}")],
            "short", w=8, stack=True, decimals=0),
        timeseries_panel(
            "Payment success",
            "Of the payments that completed or failed in the last 15 minutes, the share that completed. An alert "
            "fires when more than a quarter fail (with at least 10 payments).",
            [Q(sel("namespace:bookedbarber_payment_success:ratio", base=NAMESPACE), "success")],
            "percentunit", w=8, max=1, thresholds=steps(BAD, (0.75, WARN), (0.9, OK)), threshold_lines=True,
            runbooks=["BookedBarberPaymentFailureRatioHigh"]),
    )
    b.row(
        "Money (US dollars)",
        stat_panel(
            "Captured, last 24 h",
            "Money captured from clients' cards in the last 24 hours, before refunds.",
            [Q(_last_24h("bookedbarber_payments_captured_usd_total"))], "currencyUSD", w=6, decimals=0),
        stat_panel(
            "Refunded, last 24 h",
            "Money refunded to clients in the last 24 hours.",
            [Q(_last_24h("bookedbarber_refunds_usd_total"))], "currencyUSD", w=6, decimals=0,
            runbooks=["BookedBarberRefundSpike"]),
        stat_panel(
            "Platform fees, last 24 h",
            "BookedBarber's commission on the payments captured in the last 24 hours.",
            [Q(_last_24h("bookedbarber_platform_fees_usd_total"))], "currencyUSD", w=6, decimals=0),
        stat_panel(
            "Payouts pending",
            "Money owed to barbers in payouts that are pending or being processed.",
            [Q(agg("sum", "bookedbarber_payouts_pending_usd"))], "currencyUSD", w=6, decimals=0, graph=True),
        timeseries_panel(
            "Money per day, last 14 days",
            "Captured, refunded and platform fees for each day (UTC) of the last 14 days, whatever the "
            "dashboard's time range.",
            [Q(_per_day("bookedbarber_payments_captured_usd_total"), "captured"),
             Q(_per_day("bookedbarber_refunds_usd_total"), "refunded"),
             Q(_per_day("bookedbarber_platform_fees_usd_total"), "platform fees")],
            "currencyUSD", daily=True, decimals=0),
        timeseries_panel(
            "Barber payouts by status",
            "Payouts to barbers by status: pending, processing, completed, failed. Failed payouts need someone "
            "to look at the barber's bank details or the payment provider.",
            [Q(agg("sum", "bookedbarber_payouts", by="status"), "{{status}}")], "short", decimals=0,
            runbooks=["BookedBarberPayoutsFailing"]),
    )
    b.row(
        "Users",
        bargauge_panel(
            "Active users by role",
            "Active real users by role: clients, barbers, shop owners and managers, receptionists, administrators.",
            [Q(agg("sum", "bookedbarber_users", by="role"), "{{role}}")], "short", w=12, decimals=0),
        timeseries_panel(
            "Sign-ups per day, last 14 days",
            "New user accounts (test accounts excluded) for each day (UTC) of the last 14 days.",
            [Q(_per_day("bookedbarber_users_created_total"), "sign-ups")], "short", daily=True, decimals=0),
    )
    return b
