//! `ringlog-bench compare A.json B.json`: for every broker, step and role both results have,
//! each summary figure of A and of B and the ratio B/A, with a verdict that knows which way is
//! better (throughput up, latency down).

use std::fmt::Write as _;

use super::results::{RunResult, SummaryRow};

/// A ratio this close to 1 is called even: run-to-run noise on a shared machine is larger.
const EVEN_WITHIN: f64 = 0.03;

/// One figure of one broker, step and role in both results.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    pub broker: String,
    pub step: String,
    pub role: &'static str,
    pub metric: &'static str,
    pub a: f64,
    pub b: f64,
    /// B / A; `None` when A is zero.
    pub ratio: Option<f64>,
    pub higher_is_better: bool,
}

impl Ratio {
    /// "better", "worse" or "even" for B against A.
    pub fn verdict(&self) -> &'static str {
        let Some(ratio) = self.ratio else {
            return "-";
        };
        if (ratio - 1.0).abs() <= EVEN_WITHIN {
            "even"
        } else if (ratio > 1.0) == self.higher_is_better {
            "better"
        } else {
            "worse"
        }
    }
}

/// Which brokers to pair: by name (the default), or one named broker of A with one of B.
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    pub a_broker: Option<String>,
    pub b_broker: Option<String>,
}

/// The ratios, plus the rows found in only one of the results.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    pub ratios: Vec<Ratio>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
}

fn row_key(row: &SummaryRow) -> String {
    format!("{} / {} / {}", row.broker, row.step, row.role.name())
}

pub fn compare(a: &RunResult, b: &RunResult, pairing: &Pairing) -> Comparison {
    let pick = |rows: &[SummaryRow], broker: &Option<String>| -> Vec<SummaryRow> {
        rows.iter()
            .filter(|row| broker.as_ref().is_none_or(|name| &row.broker == name))
            .cloned()
            .collect()
    };
    let a_rows = pick(&a.summary, &pairing.a_broker);
    let b_rows = pick(&b.summary, &pairing.b_broker);
    // With a pairing, A's broker name stands for both.
    let same = |x: &SummaryRow, y: &SummaryRow| {
        x.step == y.step && x.role == y.role && (pairing.a_broker.is_some() || x.broker == y.broker)
    };
    let mut comparison = Comparison::default();
    for a_row in &a_rows {
        let Some(b_row) = b_rows.iter().find(|b_row| same(a_row, b_row)) else {
            comparison.only_in_a.push(row_key(a_row));
            continue;
        };
        let b_metrics = b_row.metrics();
        for (metric, a_value, higher_is_better) in a_row.metrics() {
            let Some(&(_, b_value, _)) = b_metrics.iter().find(|(name, _, _)| *name == metric)
            else {
                continue;
            };
            let broker = match (&pairing.a_broker, &pairing.b_broker) {
                (Some(x), Some(y)) => format!("{y} vs {x}"),
                _ => a_row.broker.clone(),
            };
            comparison.ratios.push(Ratio {
                broker,
                step: a_row.step.clone(),
                role: a_row.role.name(),
                metric,
                a: a_value,
                b: b_value,
                ratio: (a_value != 0.0).then(|| b_value / a_value),
                higher_is_better,
            });
        }
    }
    comparison.only_in_b = b_rows
        .iter()
        .filter(|b_row| !a_rows.iter().any(|a_row| same(a_row, b_row)))
        .map(row_key)
        .collect();
    comparison
}

/// Lays out `rows` under `headers` in aligned columns (numbers right-aligned).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let numeric = |cell: &str| cell.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width.saturating_sub(cell.chars().count());
            let separator = if i == 0 { "" } else { "  " };
            if numeric(cell) && i > 0 {
                let _ = write!(text, "{separator}{}{cell}", " ".repeat(pad));
            } else {
                let _ = write!(text, "{separator}{cell}{}", " ".repeat(pad));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A figure with three significant digits or so.
pub fn figure(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The comparison as text: a header naming both runs, the table, the unmatched rows.
pub fn render(a: &RunResult, b: &RunResult, comparison: &Comparison) -> String {
    let mut out = String::new();
    for (label, run) in [("A", a), ("B", b)] {
        let _ = writeln!(
            out,
            "{label}: {} (git {}), {} round(s), load {} → {}",
            run.workload.name,
            short_sha(&run.machine.git_sha),
            run.rounds,
            run.machine.loadavg,
            run.loadavg_end
        );
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = comparison
        .ratios
        .iter()
        .map(|r| {
            vec![
                r.broker.clone(),
                r.step.clone(),
                r.role.to_owned(),
                r.metric.to_owned(),
                figure(r.a),
                figure(r.b),
                r.ratio
                    .map_or("-".to_owned(), |ratio| format!("{ratio:.3}")),
                r.verdict().to_owned(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["broker", "step", "role", "metric", "A", "B", "B/A", "B is"],
        &rows,
    ));
    for (label, only) in [("A", &comparison.only_in_a), ("B", &comparison.only_in_b)] {
        for key in only {
            let _ = writeln!(out, "only in {label}: {key}");
        }
    }
    out
}

pub fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::results::tests::run_fixture;

    #[test]
    fn ratios_are_b_over_a_with_the_right_verdict() {
        let a = run_fixture(1.0);
        let b = run_fixture(2.0);
        let comparison = compare(&a, &b, &Pairing::default());
        assert!(comparison.only_in_a.is_empty() && comparison.only_in_b.is_empty());
        let find = |broker: &str, role: &str, metric: &str| {
            comparison
                .ratios
                .iter()
                .find(|r| r.broker == broker && r.role == role && r.metric == metric)
                .cloned()
                .expect("ratio")
        };
        // Broker a is the same in both; broker b is twice as fast in B.
        let same = find("a", "producer", "MB/s");
        assert!((same.ratio.expect("ratio") - 1.0).abs() < 1e-9);
        assert_eq!(same.verdict(), "even");
        let faster = find("b", "producer", "records/s");
        assert!((faster.ratio.expect("ratio") - 2.0).abs() < 1e-9);
        assert_eq!(faster.verdict(), "better");
        let latency = find("b", "producer", "p99 µs");
        assert!((latency.ratio.expect("ratio") - 0.5).abs() < 1e-9);
        assert_eq!(latency.verdict(), "better");
        // Consumers have no latency figures.
        assert!(!comparison
            .ratios
            .iter()
            .any(|r| r.role == "consumer" && r.metric.contains("µs")));
        let text = render(&a, &b, &comparison);
        assert!(text.contains("B/A"), "{text}");
        assert!(text.contains("2.000"), "{text}");
    }

    #[test]
    fn brokers_of_one_run_can_be_paired() {
        let run = run_fixture(3.0);
        let pairing = Pairing {
            a_broker: Some("a".to_owned()),
            b_broker: Some("b".to_owned()),
        };
        let comparison = compare(&run, &run, &pairing);
        let throughput = comparison
            .ratios
            .iter()
            .find(|r| r.role == "producer" && r.metric == "MB/s")
            .expect("ratio");
        assert_eq!(throughput.broker, "b vs a");
        assert!((throughput.ratio.expect("ratio") - 3.0).abs() < 1e-9);
        assert_eq!(throughput.verdict(), "better");
    }

    #[test]
    fn unmatched_rows_are_listed() {
        let a = run_fixture(1.0);
        let mut b = run_fixture(1.0);
        b.summary.retain(|row| row.broker == "a");
        let comparison = compare(&a, &b, &Pairing::default());
        assert_eq!(
            comparison.only_in_a,
            vec!["b / produce / producer", "b / produce / consumer"]
        );
        assert!(comparison.only_in_b.is_empty());
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["name", "value"],
            &[
                vec!["x".to_owned(), "1.5".to_owned()],
                vec!["longer".to_owned(), "100".to_owned()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "name    value");
        assert_eq!(lines[2], "x         1.5");
        assert_eq!(lines[3], "longer    100");
    }
}
