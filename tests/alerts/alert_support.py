"""What the alert tests share: the shipped rule files and their unit tests, a
real Alertmanager, a webhook receiver, and the documented overrides that let
the end-to-end test run in seconds without touching what is shipped
(docs/alerts.md, "Testing").

(A candidate for tests/support/: it is here because that folder belongs to the
test harness.)
"""
import copy
import importlib.util
import json
import re
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import promql_parser
import pytest
import yaml

from support.services import Process
from support.tools import ROOT, free_port, require

ALERTS = ROOT / "alerts"
RULE_FILES = sorted((ALERTS / "rules").glob("*.yaml"))
AREAS = [p.stem for p in RULE_FILES]
UNIT_TESTS = Path(__file__).resolve().parent / "units"
PLAIN_ALERTMANAGER = ALERTS / "alertmanager" / "alertmanager.yaml"


def _generator():
    spec = importlib.util.spec_from_file_location("alerts_generate", ALERTS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The one place these are set (alerts/generate.py); the tests check the rules against them.
GENERATOR = _generator()
RUNBOOK_BASE_URL = GENERATOR.RUNBOOK_BASE_URL
EXPORTER_JOB = GENERATOR.EXPORTER_JOB
CLUSTER_AREAS = GENERATOR.CLUSTER_AREAS


def rule_groups(path):
    return yaml.safe_load(Path(path).read_text())["groups"]


def rules(kind=None):
    """(area, rule) for every rule of every shipped rule file; kind 'alert' or 'record'."""
    out = []
    for path in RULE_FILES:
        for group in rule_groups(path):
            for rule in group["rules"]:
                if kind is None or kind in rule:
                    out.append((path.stem, rule))
    return out


def unit_tests(area):
    return yaml.safe_load((UNIT_TESTS / f"{area}.test.yaml").read_text())


def selectors(expr):
    """[(metric, {label: (match op, value)})] of every vector selector in a PromQL expression."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name: (str(m.op).split(".")[-1], m.value) for m in node.matchers.matchers}))
    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


COMPARISONS = {">", "<", "==", "!=", ">=", "<="}


def comparisons_as_bool(expr):
    """`expr` rewritten so that it is empty only when a selector or a join
    finds nothing: every filtering comparison made a `bool` one (`a > 2` ->
    `a > bool 2`: each series it matched comes out as 0 or 1 instead of only
    those past the threshold), and every `unless` an `and` with the same
    matching (`a unless on (x) b` keeps a only where b has no partner; as
    `and` it keeps a only where b has one, so the join on x is proven)."""
    def post(node):
        if not isinstance(node, promql_parser.BinaryExpr):
            return None
        op = str(node.op)
        if op == "unless" or (op in COMPARISONS and not (node.modifier and node.modifier.return_bool)):
            text, lhs, rhs = str(node), str(node.lhs), str(node.rhs)
            assert text.startswith(f"{lhs} {op} ") and text.endswith(rhs), f"unexpected rendering of {text!r}"
            modifier = text[len(lhs) + len(op) + 2:len(text) - len(rhs)]
            new = f"{lhs} and {modifier}{rhs}" if op == "unless" else f"{lhs} {op} bool {modifier}{rhs}"
            return promql_parser.parse(new)
        return None

    return str(promql_parser.transform(promql_parser.parse(expr), post_visit=post))


# --- the documented test overrides ------------------------------------------

FOR_LINE = re.compile(r"^(\s*for:\s*)\S+\s*$", re.M)


def shortened_rules(text, for_="3s"):
    """The rule file with every `for:` set to `for_`: the only change the
    end-to-end test makes to the shipped rules."""
    return FOR_LINE.sub(lambda m: f"{m.group(1)}{for_}", text)


def without_for(text):
    return FOR_LINE.sub("", text)


ROUTE_TIMING = ("group_wait", "group_interval", "repeat_interval")


def alertmanager_for_tests(webhook_url, plain=None):
    """The shipped Alertmanager configuration with every receiver that
    notifies someone pointed at `webhook_url` (the receiver's name stays, and
    the webhook payload carries it) and the route's waits shortened to 1s.
    Routing tree and inhibitions are kept as shipped."""
    config = copy.deepcopy(plain or yaml.safe_load(PLAIN_ALERTMANAGER.read_text()))
    for receiver in config["receivers"]:
        integrations = [k for k in receiver if k.endswith("_configs")]
        for k in integrations:
            del receiver[k]
        if integrations:
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]

    def shorten(route):
        for key in ROUTE_TIMING:
            if key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            shorten(child)
    shorten(config["route"])
    return config


def routing_without_timing(config):
    """Route tree and inhibitions, timing removed: what the overrides must keep."""
    route = copy.deepcopy(config["route"])

    def strip(r):
        for key in ROUTE_TIMING:
            r.pop(key, None)
        for child in r.get("routes", []):
            strip(child)
    strip(route)
    return {"route": route, "inhibit_rules": config.get("inhibit_rules", [])}


# --- real processes ---------------------------------------------------------

class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records Alertmanager's webhook payloads."""

    def __init__(self):
        self.payloads = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate, timeout, what):
        """The first payload for which predicate(payload) holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for p in self.payloads:
                    if predicate(p):
                        return p
            time.sleep(0.2)
        with self.lock:
            seen = [(p.get("status"), p.get("receiver"), p.get("groupLabels")) for p in self.payloads]
        pytest.fail(f"no webhook notification {what} within {timeout}s; received: {seen}", pytrace=False)


class Alertmanager:
    """prometheus-alertmanager (Debian) on a free loopback port, clustering off."""

    def __init__(self, workdir: Path, config: dict):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.dir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = Process(
            f"alertmanager-{self.port}",
            [require("prometheus-alertmanager"), f"--config.file={self.config_path}",
             f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", "--log.level=debug"],
            self.dir,
        )

    def start(self):
        self.process.start()
        self.process.wait_http(f"{self.url}/-/ready")
        return self

    def stop(self):
        self.process.stop()

    def post_alerts(self, alerts):
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200, r.read()

    def alerts(self):
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=10) as r:
            return json.load(r)
