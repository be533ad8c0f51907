"""Redis, the Celery broker: availability, memory, clients, traffic and keys, as the exporter reads INFO."""
from .common import (BAD, OK, WARN, Board, Q, agg, rate, stat_panel, steps, timeseries_panel, up_down, value_text)

USED = agg("sum", "redis_memory_used_bytes")
LIMIT = agg("sum", "redis_memory_max_bytes")
HITS = rate("redis_keyspace_hits_total")
MISSES = rate("redis_keyspace_misses_total")


def board() -> Board:
    b = Board("bookedbarber-redis", "BookedBarber Redis",
              "The Redis server that is BookedBarber's Celery broker, read by bookedbarber-exporter from INFO: "
              "is it up, how much memory and how many clients it has against its limits, how busy it is, and "
              "whether it evicts keys or refuses connections (both lose Celery tasks).",
              tags=["redis"])
    b.row(
        "Availability and saturation",
        stat_panel(
            "Redis",
            "Whether the exporter's last read of Redis (INFO) succeeded.",
            [Q(agg("max", "redis_up"))], "none", mappings=up_down(), thresholds=steps(BAD, (1, OK)),
            color_background=True, runbooks=["BookedBarberRedisDown"]),
        stat_panel(
            "Memory used of maxmemory",
            "Memory Redis uses as a share of its maxmemory setting. Past maxmemory Redis evicts keys or refuses "
            "writes, depending on its policy: either loses Celery tasks. 'no limit' when maxmemory is 0 (then "
            "the container's memory limit is what counts).",
            # -1 stands for "no maxmemory set" (mapped to a text); absent while Redis is unreachable.
            [Q(f"({USED} / ({LIMIT} > 0)) or on () (0 * {LIMIT} - 1)")], "percentunit", w=5, decimals=0,
            graph=True, mappings=value_text({-1: ("no limit", OK)}),
            thresholds=steps(OK, (0.85, WARN), (0.95, BAD)), runbooks=["BookedBarberRedisMemoryNearLimit"]),
        stat_panel(
            "Clients of maxclients",
            "Connected clients as a share of maxclients. At 100 % Redis refuses new connections.",
            [Q(f"{agg('sum', 'redis_connected_clients')} / {agg('sum', 'redis_maxclients')}")], "percentunit",
            w=5, decimals=1, graph=True, thresholds=steps(OK, (0.85, WARN), (0.95, BAD)),
            runbooks=["BookedBarberRedisClientsNearLimit"]),
        stat_panel(
            "Keys evicted, last hour",
            "Keys Redis deleted in the last hour to stay under maxmemory. On a Celery broker every eviction can "
            "be a lost task.",
            [Q(rate("redis_evicted_keys_total", window="1h", fn="increase"))], "short", w=5, decimals=0,
            thresholds=steps(OK, (1, BAD)), runbooks=["BookedBarberRedisEvictingKeys"]),
        stat_panel(
            "Connections refused, last hour",
            "Connections Redis refused in the last hour because maxclients was reached.",
            [Q(rate("redis_rejected_connections_total", window="1h", fn="increase"))], "short", w=5, decimals=0,
            thresholds=steps(OK, (1, BAD)), runbooks=["BookedBarberRedisRejectedConnections"]),
    )
    b.row(
        "Traffic",
        timeseries_panel(
            "Commands per second",
            "Commands Redis processed per second (Celery's queue pushes and pops, results, events).",
            [Q(rate("redis_commands_processed_total"), "commands")], "ops", w=8),
        timeseries_panel(
            "Keyspace hit ratio",
            "Share of key lookups that found their key. Celery polls empty queues, so a low ratio is normal on "
            "a broker; a sudden change shows a change in the workload.",
            [Q(f"{HITS} / ({HITS} + {MISSES})", "hit ratio")], "percentunit", w=8, max=1),
        timeseries_panel(
            "Clients",
            "Connected clients, those blocked in a blocking call (idle Celery workers wait in BRPOP, so this "
            "follows the number of idle worker processes), and the maxclients limit.",
            [Q(agg("sum", "redis_connected_clients"), "connected"), Q(agg("sum", "redis_blocked_clients"), "blocked"),
             Q(agg("sum", "redis_maxclients"), "maxclients")], "short", w=8, decimals=0),
    )
    b.row(
        "Memory and keys",
        timeseries_panel(
            "Memory used",
            "Memory Redis has allocated for its data (used_memory).",
            [Q(USED, "used")], "bytes", w=8, runbooks=["BookedBarberRedisMemoryNearLimit"]),
        timeseries_panel(
            "Keys per database",
            "Keys in each Redis database. On the broker's database these are Celery's queues, results and "
            "bookkeeping; a steady climb means results are never expired.",
            [Q(agg("sum", "redis_db_keys", by="db"), "db {{db}}")], "short", w=8, decimals=0),
        timeseries_panel(
            "Evictions and refused connections",
            "Keys evicted under maxmemory and connections refused under maxclients, per second. Both should "
            "stay at 0 on a Celery broker.",
            [Q(rate("redis_evicted_keys_total"), "evicted keys"),
             Q(rate("redis_rejected_connections_total"), "refused connections")], "ops", w=8,
            runbooks=["BookedBarberRedisEvictingKeys", "BookedBarberRedisRejectedConnections"]),
    )
    return b
