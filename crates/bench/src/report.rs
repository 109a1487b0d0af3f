//! The results table: each figure beside its baseline from the same run, the ratio and the target.

use serde::Serialize;

/// What a figure must satisfy.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// imc / baseline must be at most this.
    RatioAtMost(f64),
    /// imc's value must stay below this (same unit as the value).
    Below(f64),
    /// imc's value must be at most this (same unit as the value).
    AtMost(f64),
    /// imc's value must be at least this (same unit as the value).
    AtLeast(f64),
    /// Shown for context only.
    None,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    /// imc's value; `None` when imc could not be measured.
    pub imc: Option<f64>,
    /// What the baseline is (e.g. "ctr images pull").
    pub baseline_name: String,
    pub baseline: Option<f64>,
    pub target: Target,
    /// How the runs are summarised: "median" or "max".
    pub aggregate: &'static str,
    /// Every run's value, for imc and the baseline (the table shows the aggregate).
    pub imc_runs: Vec<f64>,
    pub baseline_runs: Vec<f64>,
}

impl Figure {
    pub fn ratio(&self) -> Option<f64> {
        match (self.imc, self.baseline) {
            (Some(imc), Some(base)) if base > 0.0 => Some(imc / base),
            _ => None,
        }
    }

    /// `Some(true)` when the target is met, `None` when it cannot be judged.
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtMost(max) => self.ratio().map(|r| r <= max),
            Target::Below(max) => self.imc.map(|v| v < max),
            Target::AtMost(max) => self.imc.map(|v| v <= max),
            Target::AtLeast(min) => self.imc.map(|v| v >= min),
            Target::None => None,
        }
    }
}

/// The `p` quantile (0..=1) of `values`, nearest rank; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let last = sorted.len().checked_sub(1)?;
    let rank = ((last as f64) * p.clamp(0.0, 1.0)).round() as usize;
    sorted.get(rank).copied()
}

/// What one `imc-bench run|api|pod` measured: the table, the machine and how busy it was.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub machine: crate::machine::Machine,
    pub image: String,
    /// The imc binary measured.
    pub imc: String,
    /// Load averages (1, 5, 15 min) before and after: other work on the machine skews figures.
    pub load_average_before: String,
    pub load_average_after: String,
    pub figures: Vec<Figure>,
    /// Extra context printed under the table.
    pub notes: Vec<String>,
    /// Why imc has no figures, when it has none.
    pub imc_not_available: Option<String>,
}

impl Report {
    /// The header lines and the table, as printed.
    pub fn text(&self) -> String {
        let mut out = format!(
            "\n{}\nimc binary {} · load average before {} · after {}\nimage {}\n\n",
            self.machine.summary(),
            self.imc,
            self.load_average_before,
            self.load_average_after,
            self.image
        );
        out.push_str(&render(&self.figures, self.imc_not_available.as_deref()));
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

/// Median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

fn value(v: Option<f64>, unit: &str, runs: usize, aggregate: &str) -> String {
    match v {
        Some(v) if runs > 1 => format!("{v:.2} {unit} ({aggregate} of {runs})"),
        Some(v) => format!("{v:.2} {unit}"),
        None => "-".to_owned(),
    }
}

/// The table as text, with `imc_note` shown when imc could not be measured.
pub fn render(figures: &[Figure], imc_note: Option<&str>) -> String {
    let mut rows = vec![[
        "figure".to_owned(),
        "imc".to_owned(),
        "baseline".to_owned(),
        "ratio".to_owned(),
        "target".to_owned(),
    ]];
    for f in figures {
        let target = match f.target {
            Target::RatioAtMost(max) => format!("ratio <= {max:.2}"),
            Target::Below(max) => format!("< {max:.0} {}", f.unit),
            Target::AtMost(max) => format!("<= {max} {}", f.unit),
            Target::AtLeast(min) => format!(">= {min} {}", f.unit),
            Target::None => "(context)".to_owned(),
        };
        let verdict = match f.met() {
            Some(true) => " met",
            Some(false) => " MISSED",
            None => "",
        };
        let baseline = match f.baseline {
            Some(_) => format!(
                "{}: {}",
                f.baseline_name,
                value(f.baseline, f.unit, f.baseline_runs.len(), f.aggregate)
            ),
            None => "-".to_owned(),
        };
        let imc = match (f.imc, imc_note) {
            (None, Some(_)) => "n/a".to_owned(),
            _ => value(f.imc, f.unit, f.imc_runs.len(), f.aggregate),
        };
        rows.push([
            f.name.clone(),
            imc,
            baseline,
            f.ratio().map_or("-".to_owned(), |r| {
                // Tiny ratios (a pod from a cache vs a cold pull) would all print as 0.00.
                if r < 0.01 {
                    format!("{r:.4}")
                } else {
                    format!("{r:.2}")
                }
            }),
            format!("{target}{verdict}"),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("-|-"));
            out.push('\n');
        }
    }
    if let Some(note) = imc_note {
        out.push_str(&format!("imc: not available yet ({note})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(imc: Option<f64>, baseline: Option<f64>, target: Target) -> Figure {
        Figure {
            name: "cold pull".into(),
            unit: "s",
            imc,
            baseline_name: "ctr".into(),
            baseline,
            target,
            aggregate: "median",
            imc_runs: imc.into_iter().collect(),
            baseline_runs: baseline.into_iter().collect(),
        }
    }

    #[test]
    fn targets_are_judged_on_the_ratio_or_the_value() {
        assert_eq!(
            figure(Some(5.0), Some(6.0), Target::RatioAtMost(1.0)).met(),
            Some(true)
        );
        assert_eq!(
            figure(Some(7.0), Some(6.0), Target::RatioAtMost(1.0)).met(),
            Some(false)
        );
        assert_eq!(
            figure(None, Some(6.0), Target::RatioAtMost(1.0)).met(),
            None
        );
        assert_eq!(
            figure(Some(149.0), None, Target::Below(150.0)).met(),
            Some(true)
        );
        assert_eq!(figure(Some(5.0), Some(6.0), Target::None).met(), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(percentile(&[], 0.9), None);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 0.9), Some(9.0));
        assert_eq!(percentile(&ten, 1.0), Some(10.0));
    }

    #[test]
    fn missing_imc_is_said_not_invented() {
        let table = render(
            &[figure(None, Some(6.2), Target::RatioAtMost(1.0))],
            Some("no binary"),
        );
        assert!(table.contains("n/a"));
        assert!(table.contains("ctr: 6.20 s"));
        assert!(table.contains("imc: not available yet (no binary)"));
    }
}
