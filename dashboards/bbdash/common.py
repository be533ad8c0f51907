"""Building blocks shared by every BookedBarber dashboard.

Dashboards are built with Grafana's grafana-foundation-sdk; the helpers here
fix what must be the same everywhere (the datasource variable, the label
selectors, units, thresholds, runbook links, legend and tooltip settings) so
that a dashboard module only says what its panels show.
"""

import json
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

# Alerts and panels link to runbooks under this base (docs/conventions.md).
RUNBOOK_BASE = "https://github.com/bookedbarber/bookedbarber-monitoring/blob/main/alerts/runbooks/"

# Every panel and query reads the Prometheus chosen in the `datasource`
# variable: no datasource uid is written into a dashboard.
DATASOURCE = cm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label selectors. The exporter's series are selected by its job as well as
# its instance, because a postgres_exporter or redis_exporter in the same
# namespace also serves pg_up and redis_up. Recording rules are aggregated by
# namespace; so are the edge's normalised series (alerts/rules/edge-*.yaml).
EXPORTER = 'namespace="$namespace", job="$job", instance=~"$instance"'
NAMESPACE = 'namespace="$namespace"'
# cAdvisor and kube-state-metrics series of the bundle's own pods.
PODS = 'namespace="$namespace", pod=~"bookedbarber-.*"'

TAGS = ["bookedbarber"]

# Colours of the threshold steps, in Grafana's palette names.
OK, WARN, BAD, INFO = "green", "orange", "red", "blue"

# BookedBarber's HTTP SLO at its edge (alerts/rules/slo.yaml): 99.9 % of the
# requests it answers without a 5xx over 30 days.
SLO_TARGET = 0.999
ERROR_BUDGET = round(1 - SLO_TARGET, 6)


def sel(metric: str, extra: str = "", base: str = EXPORTER) -> str:
    """`metric{base, extra}`: a selector of one of the bundle's series."""
    return f"{metric}{{{base}{', ' + extra if extra else ''}}}"


def agg(op: str, metric: str, extra: str = "", by: str = "", base: str = EXPORTER) -> str:
    """`op by (by) (metric{base, extra})`, e.g. agg("sum", "bookedbarber_payments", by="status")."""
    return f"{op}{f' by ({by}) ' if by else ''}({sel(metric, extra, base)})"


def rate(metric: str, extra: str = "", by: str = "", window: str = "$__rate_interval", fn: str = "rate",
         base: str = EXPORTER) -> str:
    """`sum by (by) (fn(metric{base, extra}[window]))`: a counter's rate (or increase) summed."""
    return f"sum{f' by ({by}) ' if by else ''}({fn}({sel(metric, extra, base)}[{window}]))"


def runbook(alert: str) -> str:
    return f"{RUNBOOK_BASE}{alert}.md"


@dataclass(frozen=True)
class Q:
    """One Prometheus query of a panel."""
    expr: str
    legend: str = ""
    table: bool = False  # instant query in table format, for table panels
    heatmap: bool = False  # histogram buckets in heatmap format, for heatmap panels


def _query(q: Q, ref_id: str) -> prometheus.Dataquery:
    b = prometheus.Dataquery().expr(q.expr).ref_id(ref_id).datasource(DATASOURCE)
    if q.legend:
        b = b.legend_format(q.legend)
    b = b.instant() if q.table else b.range()
    if q.table:
        b = b.format(pm.PromQueryFormat.TABLE)
    elif q.heatmap:
        b = b.format(pm.PromQueryFormat.HEATMAP)
    return b


def steps(*pairs) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: steps(OK, (0.8, WARN), (0.9, BAD)); the first colour is the base."""
    base, *rest = pairs
    return dashboard.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=None, color=base)] + [dm.Threshold(value=v, color=c) for v, c in rest])


def value_text(texts: dict) -> list:
    """Value mappings: {value: (text, colour)}, e.g. for 0/1 gauges."""
    return [dm.ValueMap(options={
        str(value): dm.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(texts.items())
    })]


def up_down(up="UP", down="DOWN") -> list:
    return value_text({0: (down, BAD), 1: (up, OK)})


def _links(runbooks) -> list:
    return [dashboard.DashboardLink(f"Runbook: {a}").url(runbook(a)).target_blank(True) for a in runbooks]


def _common(panel, title, description, queries, unit, w, h, thresholds, runbooks, decimals, min_, max_, mappings):
    """Settings every panel shares."""
    if not description:
        raise ValueError(f"panel {title!r} needs a description")
    panel = panel.title(title).description(description).datasource(DATASOURCE).span(w).height(h).unit(unit)
    for i, q in enumerate(queries):
        panel = panel.with_target(_query(q, chr(ord("A") + i)))
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    if runbooks:
        panel = panel.links(_links(runbooks))
    if decimals is not None:
        panel = panel.decimals(decimals)
    if min_ is not None:
        panel = panel.min(min_)
    if max_ is not None:
        panel = panel.max(max_)
    if mappings:
        panel = panel.mappings(mappings)
    return panel


def timeseries_panel(title, description, queries, unit, *, w=12, h=8, thresholds=None, runbooks=(),
                     decimals=None, min=0, max=None, stack=False, threshold_lines=False, legend_table=False,
                     daily=False):
    """A time series: lines (or stacked areas, or bars) over time. `daily` draws one bar per
    day over the last 14 days whatever the dashboard's range: its queries use $__interval (1d)."""
    p = _common(timeseries.Panel(), title, description, queries, unit, w, h,
                thresholds if thresholds is not None else steps(OK), runbooks, decimals, min, max, None)
    legend = cb.VizLegendOptions().show_legend(True).placement(cm.LegendPlacement.BOTTOM)
    if legend_table:
        legend = legend.display_mode(cm.LegendDisplayMode.TABLE).calcs(["mean", "max", "lastNotNull"])
    else:
        legend = legend.display_mode(cm.LegendDisplayMode.LIST).calcs([])
    p = (p.legend(legend)
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
         .line_width(1).fill_opacity(25 if stack else 10).show_points(cm.VisibilityMode.NEVER)
         .span_nulls(False))
    if daily:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60).interval("1d").time_from("14d")
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL).group("A"))
    if threshold_lines:
        p = p.thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED))
    return p


def stat_panel(title, description, queries, unit, *, w=4, h=4, thresholds=None, runbooks=(), decimals=None,
               mappings=None, graph=False, names=False, color_background=False):
    """A big number: the last value of each query, coloured by thresholds; `names` shows
    each query's legend beside its value."""
    p = _common(stat.Panel(), title, description, queries, unit, w, h,
                thresholds if thresholds is not None else steps(INFO), runbooks, decimals, None, None, mappings)
    return (p.graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
            .color_mode(cm.BigValueColorMode.BACKGROUND if color_background else cm.BigValueColorMode.VALUE)
            .text_mode(cm.BigValueTextMode.VALUE_AND_NAME if names else cm.BigValueTextMode.AUTO)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def bargauge_panel(title, description, queries, unit, *, w=8, h=8, thresholds=None, runbooks=(), decimals=None,
                   min=0, max=None):
    """Horizontal bars, one per series (e.g. one per status), for comparing parts of a whole."""
    p = _common(bargauge.Panel(), title, description, queries, unit, w, h,
                thresholds if thresholds is not None else steps(INFO), runbooks, decimals, min, max, None)
    return (p.display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def table_panel(title, description, query: Q, unit="short", *, w=12, h=8, runbooks=(), hide=("Time",),
                rename=None, mappings=None, sort_desc=None, decimals=None):
    """A table of the current value of each series of one instant query, one row per series,
    its labels as columns; `hide` drops columns, `rename` retitles them, `sort_desc` names the
    column (as shown) the rows are sorted by, largest first."""
    p = _common(table.Panel(), title, description, [query], unit, w, h, None, runbooks, decimals, None, None,
                mappings)
    p = (p.cell_height(cm.TableCellHeight.SM).show_header(True)
         .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
             "excludeByName": {name: True for name in hide},
             "renameByName": dict(rename or {}),
         })))
    if sort_desc:
        p = p.sort_by([cb.TableSortByFieldState().display_name(sort_desc).desc(True)])
    return p


def heatmap_panel(title, description, query: Q, unit, *, w=12, h=8):
    """Buckets of a Prometheus histogram over time."""
    if not description:
        raise ValueError(f"panel {title!r} needs a description")
    return (heatmap.Panel().title(title).description(description).datasource(DATASOURCE).span(w).height(h)
            .with_target(_query(query, "A"))
            .calculate(False)
            .y_axis(heatmap.YAxisConfig().unit(unit))
            .cell_values(heatmap.CellValues().unit("short"))
            .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges")
                   .fill("dark-orange").scale(hm.HeatmapColorScale.EXPONENTIAL).exponent(0.5).steps(64)
                   .reverse(False))
            .rows_frame(heatmap.RowsHeatmapOptions().layout(cm.HeatmapCellLayout.LE))
            .show_value(cm.VisibilityMode.NEVER)
            .mode(cm.TooltipDisplayMode.SINGLE).show_y_histogram().show_legend()
            # Empty buckets stay transparent rather than the palette's lowest colour.
            .filter_values(heatmap.FilterValueRange().le(1e-9)))


# ---- variables ---------------------------------------------------------------

def datasource_variable():
    return (dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .description("The Prometheus that scrapes the BookedBarber exporter (kube-prometheus-stack's by default)."))


def query_variable(name, label, query, description, *, multi=False, include_all=False, all_value=None):
    """A variable whose values come from a label_values() query on the chosen Prometheus."""
    v = (dashboard.QueryVariable(name).label(label).description(description).datasource(DATASOURCE)
         .query(query).refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
         .multi(multi).include_all(include_all))
    if all_value is not None:
        v = v.all_value(all_value)
    if include_all:
        v = v.current(dm.VariableOption(selected=True, text="All", value="$__all"))
    return v


def label_variable(name, label, metric, description):
    """A multi-value variable (All by default) over the values of the label `name` of one of the
    exporter's metrics."""
    return query_variable(name, label, f"label_values({sel(metric)}, {name})", description,
                          multi=True, include_all=True, all_value=".+")


def standard_variables():
    """namespace, the exporter's job (hidden constant) and instance: every dashboard has them."""
    return [
        datasource_variable(),
        query_variable("namespace", "Namespace", "label_values(bookedbarber_exporter_build_info, namespace)",
                       "Kubernetes namespace BookedBarber runs in (where its exporter is scraped)."),
        dashboard.ConstantVariable("job").value("bookedbarber-exporter").description(
            "The exporter's scrape job: the ServiceMonitor names it after the bookedbarber-exporter Service."),
        query_variable("instance", "Exporter", 'label_values(bookedbarber_exporter_build_info{namespace="$namespace", '
                       'job="$job"}, instance)',
                       "The exporter pod(s) (address:port) to read from; normally one.",
                       multi=True, include_all=True, all_value=".+"),
    ]


# ---- dashboards ----------------------------------------------------------------

@dataclass
class Board:
    """A dashboard under construction; `render()` gives its JSON text."""
    uid: str
    title: str
    description: str
    variables: list = field(default_factory=standard_variables)
    tags: list = field(default_factory=list)
    refresh: str = "1m"
    time_from: str = "now-6h"
    sections: list = field(default_factory=list)

    def row(self, title: str, *panels):
        self.sections.append((title, list(panels)))
        return self

    def build(self) -> dict:
        b = (dashboard.Dashboard(self.title).uid(self.uid).description(self.description)
             .tags(TAGS + self.tags).editable().timezone("browser").refresh(self.refresh)
             .time(self.time_from, "now").tooltip(dm.DashboardCursorSync.CROSSHAIR)
             .timepicker(dashboard.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
             .link(dashboard.DashboardLink("BookedBarber").type(dm.DashboardLinkType.DASHBOARDS)
                   .tags(TAGS).as_dropdown(True).include_vars(True).keep_time(True)
                   .icon("external link").tooltip("The other BookedBarber dashboards"))
             .annotation(dashboard.AnnotationQuery().name("Annotations & Alerts").built_in(1)
                         .datasource(cm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                         .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)").type("dashboard")))
        for v in self.variables:
            b = b.with_variable(v)
        for title, panels in self.sections:
            b = b.with_row(dashboard.Row(title))
            for p in panels:
                b = b.with_panel(p)
        model = b.build()
        for i, p in enumerate(model.panels, start=1):
            p.id_val = i
        return json.loads(json.dumps(model, cls=JSONEncoder))

    def render(self) -> str:
        return json.dumps(self.build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
