//! The benchmark's table: one row per figure, printed for a terminal and
//! written as Markdown and JSON.
//!
//! A row holds the median taskflow figure, the median raw figure measured in
//! the same runs, their ratio, and the target. The ratio is what the
//! target is checked against, except for targets on an absolute value
//! (cold start, memory, PostgreSQL rates, latencies and statement counts),
//! which are checked against the taskflow figure.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

/// A measured quantity.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Measure {
    /// Tasks (or rows, or round trips) per second.
    Rate(f64),
    /// A span of time.
    Time(Duration),
    /// Bytes (per task).
    Bytes(f64),
    /// A plain number (per task), e.g. statements.
    Count(f64),
    /// A whole number of things, e.g. messages.
    Total(f64),
    /// Bytes per second.
    ByteRate(f64),
}

impl Measure {
    fn value(self) -> f64 {
        match self {
            Measure::Rate(rate) => rate,
            Measure::Time(time) => time.as_secs_f64(),
            Measure::Bytes(bytes) => bytes,
            Measure::Count(count) => count,
            Measure::Total(total) => total,
            Measure::ByteRate(rate) => rate,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Measure::Rate(_) => "per_second",
            Measure::Time(_) => "seconds",
            Measure::Bytes(_) => "bytes",
            Measure::Count(_) | Measure::Total(_) => "count",
            Measure::ByteRate(_) => "bytes_per_second",
        }
    }

    /// `412.3k/s`, `4.10 µs`, `253.1 ms`, `812 B`, `300.0k`, `2.1 MB/s`.
    pub(crate) fn text(self) -> String {
        match self {
            Measure::Rate(rate) if rate >= 1e6 => format!("{:.2}M/s", rate / 1e6),
            Measure::Rate(rate) if rate >= 1e3 => format!("{:.1}k/s", rate / 1e3),
            Measure::Rate(rate) => format!("{rate:.1}/s"),
            Measure::Time(time) => duration_text(time),
            Measure::Bytes(bytes) => format!("{bytes:.0} B"),
            Measure::Count(count) => format!("{count:.3}"),
            Measure::Total(total) if total >= 1e6 => format!("{:.2}M", total / 1e6),
            Measure::Total(total) if total >= 1e4 => format!("{:.1}k", total / 1e3),
            Measure::Total(total) => format!("{total:.0}"),
            Measure::ByteRate(rate) if rate >= 1e6 => format!("{:.2} MB/s", rate / 1e6),
            Measure::ByteRate(rate) => format!("{:.1} kB/s", rate / 1e3),
        }
    }
}

pub(crate) fn duration_text(time: Duration) -> String {
    let secs = time.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.1} µs", secs * 1e6)
    }
}

/// What a row must reach.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// The ratio is at least this.
    RatioAtLeast(f64),
    /// The ratio is at most this.
    RatioAtMost(f64),
    /// The taskflow figure is at most this.
    AtMost(Measure),
    /// The taskflow figure is at least this.
    AtLeast(Measure),
    /// Reported, with no target.
    Report,
}

impl Target {
    fn text(&self) -> String {
        match self {
            Target::RatioAtLeast(x) => format!("≥ {x:.2}"),
            Target::RatioAtMost(x) => format!("≤ {x:.2}"),
            Target::AtMost(limit) => format!("≤ {}", limit.text()),
            Target::AtLeast(limit) => format!("≥ {}", limit.text()),
            Target::Report => "report".to_owned(),
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) workload: String,
    /// `None` when the workload cannot run yet (see `pending`).
    pub(crate) taskflow: Option<Measure>,
    pub(crate) raw: Option<Measure>,
    /// Raw figure's name, e.g. `tokio::spawn`.
    pub(crate) raw_name: String,
    /// What the ratio means, e.g. `taskflow / raw throughput`.
    pub(crate) ratio_meaning: &'static str,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: Target,
    /// Why the row has no figure, when it has none.
    pub(crate) pending: Option<String>,
    /// Extra evidence: spreads, secondary figures.
    pub(crate) note: String,
    /// Every run's taskflow and raw figure, for the JSON.
    pub(crate) samples: Vec<(f64, f64)>,
}

impl Row {
    pub(crate) fn new(id: &'static str, workload: impl Into<String>, target: Target) -> Self {
        Row {
            id,
            workload: workload.into(),
            taskflow: None,
            raw: None,
            raw_name: String::new(),
            ratio_meaning: "",
            ratio: None,
            target,
            pending: None,
            note: String::new(),
            samples: Vec::new(),
        }
    }

    pub(crate) fn pending(id: &'static str, workload: impl Into<String>, why: String) -> Self {
        let mut row = Row::new(id, workload, Target::Report);
        row.pending = Some(why);
        row
    }

    /// Whether the target is met; `None` without a target or a figure.
    pub(crate) fn met(&self) -> Option<bool> {
        match (&self.target, self.taskflow, self.ratio) {
            (Target::RatioAtLeast(x), Some(_), Some(ratio)) => Some(ratio >= *x),
            (Target::RatioAtMost(x), Some(_), Some(ratio)) => Some(ratio <= *x),
            (Target::AtMost(limit), Some(value), _) => Some(value.value() <= limit.value()),
            (Target::AtLeast(limit), Some(value), _) => Some(value.value() >= limit.value()),
            _ => None,
        }
    }

    fn cells(&self) -> [String; 7] {
        let figure = |m: Option<Measure>| m.map_or_else(|| "—".to_owned(), Measure::text);
        let taskflow = match &self.pending {
            Some(_) => "pending".to_owned(),
            None => figure(self.taskflow),
        };
        let raw = match self.raw {
            Some(raw) if self.raw_name.is_empty() => raw.text(),
            Some(raw) => format!("{} ({})", raw.text(), self.raw_name),
            None => "—".to_owned(),
        };
        let ratio = self
            .ratio
            .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"));
        let met = match self.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        [
            self.id.to_owned(),
            self.workload.clone(),
            taskflow,
            raw,
            ratio,
            self.target.text(),
            met.to_owned(),
        ]
    }
}

const HEADER: [&str; 7] = [
    "id", "workload", "taskflow", "raw", "ratio", "target", "met",
];

/// The table for a terminal: aligned columns, then the notes.
pub(crate) fn text(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(Row::cells).collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (cell, width) in cells.iter().zip(widths) {
            let pad = width.saturating_sub(cell.chars().count());
            let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, &HEADER.map(str::to_owned));
    for row in &cells {
        line(&mut out, row);
    }
    out.push_str(&notes(rows));
    out
}

/// The table as Markdown, then the notes as a list.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(HEADER.len()));
    for row in rows {
        let cells = row.cells().map(|c| c.replace('|', "\\|"));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
    out.push_str(&notes(rows));
    out
}

fn notes(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        let mut parts = Vec::new();
        if !row.ratio_meaning.is_empty() {
            parts.push(format!("ratio = {}", row.ratio_meaning));
        }
        if let Some(why) = &row.pending {
            parts.push(why.clone());
        }
        if !row.note.is_empty() {
            parts.push(row.note.clone());
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "- {} {}: {}", row.id, row.workload, parts.join("; "));
        }
    }
    out
}

/// The table as JSON, with the run's context.
pub(crate) fn json(rows: &[Row], context: Value) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let figure = |m: Option<Measure>| {
                m.map_or(
                    Value::Null,
                    |m| json!({ "value": m.value(), "unit": m.unit(), "text": m.text() }),
                )
            };
            json!({
                "id": row.id,
                "workload": row.workload,
                "taskflow": figure(row.taskflow),
                "raw": figure(row.raw),
                "raw_name": row.raw_name,
                "ratio": row.ratio,
                "ratio_meaning": row.ratio_meaning,
                "target": row.target.text(),
                "met": row.met(),
                "pending": row.pending,
                "note": row.note,
                "runs": row.samples.iter().map(|(t, r)| json!([t, r])).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "context": context, "rows": rows })
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The median of durations.
pub(crate) fn median_time(times: &[Duration]) -> Duration {
    let secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(median(&secs).max(0.0))
}

/// `min–max` of durations, for notes.
pub(crate) fn spread(times: &[Duration]) -> String {
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    format!("{}–{}", duration_text(min), duration_text(max))
}
