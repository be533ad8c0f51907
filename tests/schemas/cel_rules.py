"""The CEL rules (`x-kubernetes-validations`) of CustomResourceDefinitions,
evaluated offline on custom resources as the API server evaluates them: the
schema's defaults applied first, each rule run with `self` bound to the
value of the node that declares it (a rule on an absent field does not
run), on every item of a list and every value of a map. Transition rules
(those reading oldSelf) compare an update with the stored object, which a
create has not: they are skipped, as the API server skips them on create.

A rule the evaluator cannot run (an unknown function, a type error) is a
violation too, so that nothing passes unchecked. Needs PyPI cel-python.
"""
import copy
import glob
import os

import celpy
import yaml
from celpy import celtypes


def _upper_ascii(s):
    return celtypes.StringType(str(s).upper())


def _split(s, sep, limit=None):
    parts = str(s).split(str(sep)) if limit is None else str(s).split(str(sep), int(limit) - 1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


# Kubernetes' CEL string library functions the shipped CRDs use beyond the CEL standard.
FUNCTIONS = {"upperAscii": _upper_ascii, "split": _split}
ENV = celpy.Environment()


def load_crds(directory):
    """{apiVersion, kind: openAPIV3Schema} of every CRD file under `directory` (recursively)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.yaml"), recursive=True)):
        with open(path) as fh:
            # libyaml's loader where PyYAML has it: the CRDs are megabytes.
            for crd in yaml.load_all(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for ver in crd["spec"]["versions"]:
                    found[(f"{group}/{ver['name']}", kind)] = ver["schema"]["openAPIV3Schema"]
    return found


def with_defaults(schema, value):
    """`value` with the schema's defaults filled in where fields are absent (structural defaulting)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = with_defaults(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(out) - set(schema.get("properties") or {}):
                out[name] = with_defaults(extra, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(schema["items"], v) for v in value]
    return value


_compiled = {}


def _program(rule):
    if rule not in _compiled:
        _compiled[rule] = ENV.program(ENV.compile(rule), functions=FUNCTIONS)
    return _compiled[rule]


def violations(schema, value, path=""):
    """[(path, message)] for every rule of `schema` that `value` (already defaulted) breaks."""
    found = []
    for v in schema.get("x-kubernetes-validations") or []:
        rule = v["rule"]
        if "oldSelf" in rule:
            continue
        try:
            ok = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
        except Exception as e:  # noqa: BLE001 - any failure to evaluate is reported, never passed
            found.append((path or "<root>", f"CEL rule not evaluated ({type(e).__name__}: {e}): {rule}"))
            continue
        if isinstance(ok, Exception) or not bool(ok):
            found.append((path or "<root>", f"{v.get('message') or 'CEL rule failed'} (rule: {rule})"))
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                found += violations(sub, value[name], f"{path}.{name}" if path else name)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(props):
                found += violations(extra, value[name], f"{path}.{name}" if path else name)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += violations(schema["items"], item, f"{path}[{i}]")
    return found


def check(doc, crds):
    """CEL violations of a custom resource, or None when no CRD of `crds` defines its kind."""
    schema = crds.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return None
    return violations(schema, with_defaults(schema, doc))
