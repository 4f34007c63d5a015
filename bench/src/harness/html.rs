//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no links), so it
//! can be mailed, attached to an issue or opened offline years later.
//!
//! For every step and role it draws the throughput over time (one line per broker and round,
//! colour by broker) and, where there is latency, the p99 over time and the latency by
//! percentile on the log-scaled percentile axis HdrHistogram's plots use (0%, 90%, 99%, 99.9%,
//! ... equally spaced), every broker in the same axes so they compare at a glance. A summary table gives the median
//! across rounds with its range and the ratio to the first broker.
//!
//! The SVG is written by hand: a line chart is a few dozen lines, and a plotting crate would
//! add dependencies and fonts for no gain here.

use std::fmt::Write as _;

use super::compare::{figure, short_sha};
use super::perf::{Latency, PercentilePoint, TimelinePoint};
use super::results::{BrokerRound, Role, RunResult, SummaryRow};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 340.0;
const MARGIN_LEFT: f64 = 72.0;
const MARGIN_RIGHT: f64 = 44.0;
const MARGIN_TOP: f64 = 16.0;
const MARGIN_BOTTOM: f64 = 48.0;
/// The highest percentile drawn: 99.9999% (six nines), where the axis stops.
const NINES_MAX: f64 = 6.0;
/// Colour per broker, in the order the brokers ran (colour-blind-safe, after Okabe and Ito).
const PALETTE: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442",
];
/// Dash pattern per round (round 1 solid).
const DASHES: [&str; 4] = ["", "6 3", "2 3", "10 3 2 3"];

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub dash: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// How the x values map onto the axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Seconds,
    /// Percentiles 0..100, drawn as "nines": -log10(1 - p/100).
    Percentile,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The percentile axis position of percentile `p`: 0% → 0, 90% → 1, 99% → 2, ...
pub fn nines(p: f64) -> f64 {
    let remaining = (1.0 - p / 100.0).max(10f64.powf(-NINES_MAX));
    (-remaining.log10()).clamp(0.0, NINES_MAX)
}

/// Tick positions for `0..=max`: 1, 2 or 5 times a power of ten, about five of them.
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|step| max / step <= 6.0)
        .unwrap_or(10.0 * power);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

fn tick_label(value: f64) -> String {
    // Ticks are round numbers: print them with no trailing zeros.
    let short = |v: f64| {
        let text = format!("{v:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    if value >= 1e6 {
        format!("{}M", short(value / 1e6))
    } else if value >= 1e4 {
        format!("{}k", short(value / 1e3))
    } else {
        short(value)
    }
}

fn percentile_label(nines: f64) -> String {
    match nines as u32 {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        n => format!("99.{}%", "9".repeat(n as usize - 2)).replace("99.%", "99%"),
    }
}

/// A line chart as an inline `<svg>` element.
pub fn line_chart(series: &[Series], x_axis: XAxis, x_label: &str, y_label: &str) -> String {
    let x_of = |x: f64| match x_axis {
        XAxis::Seconds => x,
        XAxis::Percentile => nines(x),
    };
    let points = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(xm, ym), &(x, y)| {
        (xm.max(x_of(x)), ym.max(y))
    });
    let x_ticks = match x_axis {
        XAxis::Seconds => ticks(x_max),
        XAxis::Percentile => (0..=x_max.ceil().max(1.0) as u32).map(f64::from).collect(),
    };
    let y_ticks = ticks(y_max);
    let x_end = x_ticks
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(f64::MIN_POSITIVE);
    let y_end = y_ticks
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(f64::MIN_POSITIVE);
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let px = |x: f64| MARGIN_LEFT + x / x_end * plot_width;
    let py = |y: f64| MARGIN_TOP + plot_height - y / y_end * plot_height;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         role=\"img\">\n"
    );
    for &y in &y_ticks {
        let _ = writeln!(
            svg,
            "<line class=\"grid\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            px(0.0),
            py(y),
            px(x_end),
            py(y),
            px(0.0) - 6.0,
            py(y) + 4.0,
            tick_label(y)
        );
    }
    for &x in &x_ticks {
        let label = match x_axis {
            XAxis::Seconds => tick_label(x),
            XAxis::Percentile => percentile_label(x),
        };
        let _ = writeln!(
            svg,
            "<line class=\"grid\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>\
             <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
            px(x),
            py(0.0),
            px(x),
            py(y_end),
            px(x),
            py(0.0) + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text class=\"axis\" transform=\"translate(14 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\">{}</text>",
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 8.0,
        escape(x_label),
        MARGIN_TOP + plot_height / 2.0,
        escape(y_label)
    );
    // A lone point draws no line: mark it.
    for line in series.iter().filter(|s| s.points.len() == 1) {
        let (x, y) = line.points[0];
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"><title>{}</title></circle>",
            px(x_of(x)),
            py(y),
            line.color,
            escape(&line.label)
        );
    }
    for line in series.iter().filter(|s| s.points.len() > 1) {
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x_of(x)), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-dasharray=\"{}\" \
             points=\"{}\"><title>{}</title></polyline>",
            line.color,
            line.dash,
            path.join(" "),
            escape(&line.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn legend(series: &[Series]) -> String {
    let mut html = String::from("<div class=\"legend\">");
    for line in series {
        let _ = write!(
            html,
            "<span><svg width=\"28\" height=\"10\"><line x1=\"0\" y1=\"5\" x2=\"28\" y2=\"5\" \
             stroke=\"{}\" stroke-width=\"2\" stroke-dasharray=\"{}\"/></svg> {}</span>",
            line.color,
            line.dash,
            escape(&line.label)
        );
    }
    html.push_str("</div>\n");
    html
}

fn broker_color(result: &RunResult, broker: &str) -> &'static str {
    let index = result.brokers.iter().position(|b| b == broker).unwrap_or(0);
    PALETTE[index % PALETTE.len()]
}

fn round_dash(round: u32) -> &'static str {
    DASHES[(round.saturating_sub(1) as usize) % DASHES.len()]
}

/// A figure of each second of `role` in step `step` (`None`: no figure that second), one
/// series per broker and round.
fn timeline_series(
    result: &RunResult,
    step: &str,
    role: Role,
    figure: impl Fn(&TimelinePoint) -> Option<f64>,
) -> Vec<Series> {
    let mut series = Vec::new();
    for run in &result.runs {
        for step_run in run.steps.iter().filter(|s| s.name == step) {
            for totals in step_run.totals.iter().filter(|t| t.role == role) {
                let points: Vec<(f64, f64)> = totals
                    .timeline
                    .iter()
                    .filter_map(|p| Some((p.t_s, figure(p)?)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                series.push(Series {
                    label: format!("{} round {}", run.broker, run.round),
                    color: broker_color(result, &run.broker),
                    dash: round_dash(run.round),
                    points,
                });
            }
        }
    }
    series
}

/// The latency distribution of `role` in step `step`: one series per broker and round from
/// the merged histograms, or one per process where they could not be merged.
fn latency_series(result: &RunResult, step: &str, role: Role) -> Vec<Series> {
    let mut series = Vec::new();
    for run in &result.runs {
        for step_run in run.steps.iter().filter(|s| s.name == step) {
            let latencies: Vec<(u32, &Latency)> = step_run
                .processes
                .iter()
                .filter(|p| p.role == role)
                .filter_map(|p| Some((p.index, p.output.as_ref()?.latency.as_ref()?)))
                .collect();
            let count: u64 = latencies.iter().map(|(_, l)| l.count).sum();
            let merged = step_run
                .totals
                .iter()
                .find(|t| t.role == role && t.latency_exact && !t.latency_distribution.is_empty());
            let lines: Vec<(String, u64, &[PercentilePoint])> = match merged {
                Some(totals) => vec![(String::new(), count, &totals.latency_distribution)],
                None => latencies
                    .iter()
                    .map(|(index, l)| (format!(" #{index}"), l.count, l.distribution.as_slice()))
                    .collect(),
            };
            for (suffix, count, distribution) in lines {
                // The maximum is the last of `count` samples: draw it at the percentile that
                // resolution reaches rather than at an infinite number of nines.
                let last = 100.0 * (1.0 - 1.0 / count.max(2) as f64);
                series.push(Series {
                    label: format!("{} round {}{suffix}", run.broker, run.round),
                    color: broker_color(result, &run.broker),
                    dash: round_dash(run.round),
                    points: distribution
                        .iter()
                        .map(|&(p, v)| (p.min(last), v))
                        .collect(),
                });
            }
        }
    }
    series
}

/// The (step, warm-up, role) triples in the order they ran.
fn step_roles(runs: &[BrokerRound]) -> Vec<(String, bool, Role)> {
    let mut found: Vec<(String, bool, Role)> = Vec::new();
    for run in runs {
        for step in &run.steps {
            for totals in &step.totals {
                let key = (step.name.clone(), step.warmup, totals.role);
                if !found.contains(&key) {
                    found.push(key);
                }
            }
        }
    }
    found
}

fn spread_cell(spread: Option<super::results::Spread>) -> String {
    match spread {
        None => "–".to_owned(),
        Some(s) if s.min == s.max => figure(s.median),
        Some(s) => format!(
            "{} <small>({}–{})</small>",
            figure(s.median),
            figure(s.min),
            figure(s.max)
        ),
    }
}

/// B/A of two figures as a cell.
fn ratio_cell(value: f64, base: Option<f64>) -> String {
    match base {
        Some(base) if base != 0.0 => format!("{:.2}×", value / base),
        _ => "–".to_owned(),
    }
}

fn summary_table(result: &RunResult) -> String {
    let first = result.brokers.first();
    let base_of = |row: &SummaryRow| {
        result
            .summary
            .iter()
            .find(|r| Some(&r.broker) == first && r.step == row.step && r.role == row.role)
    };
    let mut html = String::from(
        "<table><tr><th>broker</th><th>step</th><th>role</th><th>rounds</th><th>MB/s</th>\
         <th>fetch-only MB/s</th><th>records/s</th><th>p50 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>max µs</th>\
         <th>MB/s vs first</th><th>p99 vs first</th><th>errors</th><th>failed</th></tr>\n",
    );
    for row in &result.summary {
        let base = base_of(row);
        let p99_base = base.and_then(|b| b.latency_us_p99.map(|s| s.median));
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&row.broker),
            escape(&row.step),
            row.role.name(),
            row.rounds,
            spread_cell(Some(row.mb_per_sec)),
            spread_cell(row.fetch_mb_per_sec),
            spread_cell(Some(row.records_per_sec)),
            spread_cell(row.latency_us_p50),
            spread_cell(row.latency_us_p99),
            spread_cell(row.latency_us_p999),
            spread_cell(row.latency_us_max),
            ratio_cell(row.mb_per_sec.median, base.map(|b| b.mb_per_sec.median)),
            row.latency_us_p99
                .map_or("–".to_owned(), |p99| ratio_cell(p99.median, p99_base)),
            row.errors,
            row.failed_processes
        );
    }
    html.push_str("</table>\n");
    html
}

fn machine_table(result: &RunResult) -> String {
    let machine = &result.machine;
    let dirty = match machine.git_dirty {
        Some(true) => " (uncommitted changes)",
        _ => "",
    };
    let rows = [
        (
            "workload",
            format!("{} ({})", result.workload.name, result.workload.path),
        ),
        ("brokers", result.brokers.join(", ")),
        ("rounds", result.rounds.to_string()),
        ("started", utc(result.started_at_unix_ms)),
        (
            "took",
            format!(
                "{:.0} s",
                result
                    .finished_at_unix_ms
                    .saturating_sub(result.started_at_unix_ms) as f64
                    / 1e3
            ),
        ),
        ("git", format!("{}{dirty}", short_sha(&machine.git_sha))),
        ("kernel", machine.kernel.clone()),
        ("CPU", format!("{} × {}", machine.cores, machine.cpu_model)),
        (
            "load average",
            format!("{} before, {} after", machine.loadavg, result.loadavg_end),
        ),
        ("ringlog-perf", result.workload.perf_bin.clone()),
    ];
    let mut html = String::from("<table class=\"machine\">\n");
    for (key, value) in rows {
        let _ = writeln!(html, "<tr><th>{key}</th><td>{}</td></tr>", escape(&value));
    }
    html.push_str("</table>\n");
    html
}

/// `unix_ms` as `YYYY-MM-DD HH:MM:SS UTC` (days to civil date after Howard Hinnant).
pub fn utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let (days, time) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1600px}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;\
text-align:right}th{background:#f3f3f3}td:nth-child(-n+3){text-align:left}\
table.machine td{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:1.5em}\
.chart .grid{stroke:#e4e4e4}.chart .tick{font-size:11px;fill:#555}\
.chart .axis{font-size:12px;fill:#222}.chart .series{stroke-width:1.6}\
.legend span{margin-right:1.2em;font-size:12px;white-space:nowrap}.failures{color:#a00}\
small{color:#777}";

/// The whole report.
pub fn render(result: &RunResult) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ringlog-bench: {}</title><style>{STYLE}</style></head><body>\n\
         <h1>ringlog-bench: {}</h1>\n<p>{}</p>\n",
        escape(&result.workload.name),
        escape(&result.workload.name),
        escape(&result.workload.description)
    );
    html.push_str(&machine_table(result));
    if !result.failures.is_empty() {
        html.push_str("<h2>Failures</h2><ul class=\"failures\">");
        for failure in &result.failures {
            let _ = write!(html, "<li>{}</li>", escape(failure));
        }
        html.push_str("</ul>\n");
    }
    html.push_str(
        "<h2>Summary</h2><p>Median across rounds, (min–max) beside it. Concurrent processes' \
         throughput adds up; a step's latency is its processes' histograms merged. Warm-up steps \
         are not counted. MB = 2<sup>20</sup> bytes.</p>\n",
    );
    html.push_str(&summary_table(result));
    for (step, warmup, role) in step_roles(&result.runs) {
        let label = if warmup { " (warm-up)" } else { "" };
        let _ = writeln!(
            html,
            "<h2>{} — {}{label}</h2>\n<div class=\"charts\">",
            escape(&step),
            role.name()
        );
        let throughput = timeline_series(result, &step, role, |p| {
            Some(p.bytes as f64 / super::perf::BYTES_PER_MB)
        });
        let _ = write!(
            html,
            "<figure><figcaption>Throughput over time</figcaption>{}{}</figure>",
            line_chart(&throughput, XAxis::Seconds, "seconds into the step", "MB/s"),
            legend(&throughput)
        );
        let latency = latency_series(result, &step, role);
        if !latency.is_empty() {
            let _ = write!(
                html,
                "<figure><figcaption>Latency by percentile</figcaption>{}{}</figure>",
                line_chart(&latency, XAxis::Percentile, "percentile", "latency (µs)"),
                legend(&latency)
            );
        }
        let p99 = timeline_series(result, &step, role, |p| p.p99_us);
        if !p99.is_empty() {
            let _ = write!(
                html,
                "<figure><figcaption>p99 latency over time</figcaption>{}{}</figure>",
                line_chart(
                    &p99,
                    XAxis::Seconds,
                    "seconds into the step",
                    "p99 latency (µs)"
                ),
                legend(&p99)
            );
        }
        html.push_str("</div>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::results::tests::run_fixture;

    #[test]
    fn percentile_axis_is_in_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), NINES_MAX);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }

    #[test]
    fn ticks_are_round_numbers_covering_the_range() {
        assert_eq!(ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(1234.0), vec![0.0, 500.0, 1000.0, 1500.0]);
        assert_eq!(ticks(0.0), vec![0.0, 1.0]);
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(20_000.0), "20k");
        assert_eq!(tick_label(1_500_000.0), "1.5M");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56 UTC");
    }

    #[test]
    fn report_has_the_plots_and_is_self_contained() {
        let result = run_fixture(2.0);
        let html = render(&result);
        // One throughput chart per step and role (warm-up included), latency for producers.
        assert_eq!(html.matches("Throughput over time").count(), 3);
        assert_eq!(html.matches("Latency by percentile").count(), 2);
        assert_eq!(html.matches("p99 latency over time").count(), 2);
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 7);
        // Two brokers x two rounds of throughput lines in the measured producer chart, in the
        // first broker's colour and the second's.
        assert!(html.contains(PALETTE[0]) && html.contains(PALETTE[1]));
        assert!(html.contains("b round 2"));
        // The consumers' one-second timelines are single points, drawn as markers.
        assert_eq!(html.matches("<circle").count(), 4);
        assert!(html.contains("99.9%"));
        // The summary table's ratio to the first broker: b is about 2x as fast.
        assert!(html.contains("2.00×"), "no ratio in the summary");
        for external in [
            "http:", "https:", "src=", "href=", "<script", "<link", "@import",
        ] {
            assert!(
                !html.contains(external),
                "report refers outside itself: {external}"
            );
        }
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn labels_are_escaped() {
        let mut result = run_fixture(1.0);
        result.workload.description = "<b>&</b>".to_owned();
        let html = render(&result);
        assert!(html.contains("&lt;b&gt;&amp;&lt;/b&gt;"));
        assert!(!html.contains("<b>&</b>"));
    }
}
