"""The BookedBarber Grafana dashboards, as code (grafana-foundation-sdk).

DASHBOARDS maps each generated file name to the function that builds it.
"""
from . import business, celery, exporter, overview, postgresql, redis

DASHBOARDS = {
    "bookedbarber-overview.json": overview.board,
    "bookedbarber-business.json": business.board,
    "bookedbarber-postgresql.json": postgresql.board,
    "bookedbarber-redis.json": redis.board,
    "bookedbarber-celery.json": celery.board,
    "bookedbarber-exporter.json": exporter.board,
}
