//! A scenario's result: printed as a table on stdout and appended as one
//! JSON object to the results file.
//!
//! Scenarios fill a [`Report`] with parameters, figures (value and unit),
//! latency summaries and failures; this file only formats. The JSON record
//! also carries the machine (cores, memory), the git commit and the server
//! flags the operator passed, so that results can be compared across runs.

use std::io::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use super::json::{Object, Value};
use super::sysinfo;

/// Percentiles of one latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Summary {
    pub fn of(histogram: &Histogram<u64>) -> Summary {
        if histogram.is_empty() {
            return Summary::default();
        }
        Summary {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        }
    }

    fn to_json(self) -> Value {
        let mut o = Object::new();
        o.set("count", self.count)
            .set("p50", self.p50_us)
            .set("p90", self.p90_us)
            .set("p99", self.p99_us)
            .set("p99_9", self.p999_us)
            .set("max", self.max_us)
            .set("mean", self.mean_us);
        Value::Object(o)
    }
}

/// Latency percentiles per window of a run (`Latencies::deliver_timeline`).
#[derive(Clone, Debug)]
struct Timeline {
    key: String,
    label: String,
    width_ms: u64,
    /// Wall-clock start of the first window, to set beside server logs.
    start_unix_ms: u64,
    windows: Vec<Summary>,
}

impl Timeline {
    fn to_json(&self) -> Value {
        let mut o = Object::new();
        o.set("width_ms", self.width_ms)
            .set("start_unix_ms", self.start_unix_ms)
            .set(
                "windows",
                Value::List(self.windows.iter().map(|w| w.to_json()).collect()),
            );
        Value::Object(o)
    }
}

/// One figure: a JSON key, a label for the table, a value and its unit.
#[derive(Clone, Debug)]
struct Figure {
    key: String,
    label: String,
    value: Value,
    unit: String,
}

/// The result of one scenario run.
#[derive(Clone, Debug)]
pub struct Report {
    pub scenario: &'static str,
    /// One line saying what ran.
    pub title: String,
    pub target: String,
    pub server_flags: Option<String>,
    params: Object,
    figures: Vec<Figure>,
    latencies: Vec<(String, String, Summary)>,
    timelines: Vec<Timeline>,
    /// What was verified, for the reader.
    pub checks: Vec<String>,
    /// Anything wrong. A report with failures makes the run exit non-zero.
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(
        scenario: &'static str,
        title: String,
        target: String,
        server_flags: Option<String>,
    ) -> Report {
        Report {
            scenario,
            title,
            target,
            server_flags,
            params: Object::new(),
            figures: Vec::new(),
            latencies: Vec::new(),
            timelines: Vec::new(),
            checks: Vec::new(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn param(&mut self, key: &str, value: impl Into<Value>) -> &mut Report {
        self.params.set(key, value);
        self
    }

    /// Adds a figure; `key` should end with its unit (`_per_s`, `_bytes`).
    pub fn figure(
        &mut self,
        key: &str,
        label: &str,
        value: impl Into<Value>,
        unit: &str,
    ) -> &mut Report {
        self.figures.push(Figure {
            key: key.to_string(),
            label: label.to_string(),
            value: value.into(),
            unit: unit.to_string(),
        });
        self
    }

    pub fn latency(&mut self, key: &str, label: &str, histogram: &Histogram<u64>) -> &mut Report {
        self.latencies
            .push((key.to_string(), label.to_string(), Summary::of(histogram)));
        self
    }

    /// Percentiles per window of `width`, the first starting at
    /// `start_unix_ms`; a window with no sample reports a count of 0.
    pub fn timeline(
        &mut self,
        key: &str,
        label: &str,
        width: std::time::Duration,
        start_unix_ms: u64,
        windows: &[Histogram<u64>],
    ) -> &mut Report {
        self.timelines.push(Timeline {
            key: key.to_string(),
            label: label.to_string(),
            width_ms: width.as_millis() as u64,
            start_unix_ms,
            windows: windows.iter().map(Summary::of).collect(),
        });
        self
    }

    pub fn fail(&mut self, problem: impl Into<String>) {
        self.failures.push(problem.into());
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "== gust-bench {}: {}\n",
            self.scenario, self.title
        ));
        let width = self
            .figures
            .iter()
            .map(|f| f.label.len())
            .max()
            .unwrap_or(0)
            .max(24);
        for f in &self.figures {
            out.push_str(&format!(
                "  {:<width$}  {} {}\n",
                f.label,
                display(&f.value),
                f.unit
            ));
        }
        let shown: Vec<&(String, String, Summary)> =
            self.latencies.iter().filter(|l| l.2.count > 0).collect();
        if !shown.is_empty() {
            out.push_str(&format!(
                "  {:<width$}  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "max"
            ));
            for (_, label, s) in shown {
                out.push_str(&format!(
                    "  {:<width$}  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                    label, s.count, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
                ));
            }
        }
        for timeline in &self.timelines {
            out.push_str(&format!(
                "  {} by {} ms of the run (from unix ms {}), µs:\n",
                timeline.label, timeline.width_ms, timeline.start_unix_ms
            ));
            out.push_str(&format!(
                "    {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                "from s", "count", "p50", "p90", "p99", "p99.9", "max"
            ));
            for (i, w) in timeline.windows.iter().enumerate() {
                let from_s = i as f64 * timeline.width_ms as f64 / 1000.0;
                out.push_str(&format!(
                    "    {:>9.3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                    from_s, w.count, w.p50_us, w.p90_us, w.p99_us, w.p999_us, w.max_us
                ));
            }
        }
        // A check is only claimed when nothing failed.
        let verb = if self.failures.is_empty() {
            "checked"
        } else {
            "checks run"
        };
        for check in &self.checks {
            out.push_str(&format!("  {verb}: {check}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        if self.failures.is_empty() {
            out.push_str("  result: OK\n");
        } else {
            out.push_str(&format!(
                "  result: FAILED ({} problems)\n",
                self.failures.len()
            ));
            for failure in &self.failures {
                out.push_str(&format!("    - {failure}\n"));
            }
        }
        out
    }

    /// The JSON record (one line).
    pub fn json(&self, time_unix_s: u64) -> String {
        let mut record = Object::new();
        record
            .set("scenario", self.scenario)
            .set("ok", self.ok())
            .set("time_unix_s", time_unix_s)
            .set("title", self.title.as_str())
            .set("target", self.target.as_str())
            .set("git_commit", sysinfo::git_commit())
            .set("cores", sysinfo::cores())
            .set("mem_total_bytes", sysinfo::mem_total_bytes())
            .set("server_flags", self.server_flags.clone())
            .set("params", Value::Object(self.params.clone()));
        let mut figures = Object::new();
        for f in &self.figures {
            figures.set(&f.key, f.value.clone());
        }
        for (key, _, summary) in &self.latencies {
            figures.set(key, summary.to_json());
        }
        for timeline in &self.timelines {
            figures.set(&timeline.key, timeline.to_json());
        }
        record.set("figures", Value::Object(figures));
        record.set("checks", strings(&self.checks));
        record.set("failures", strings(&self.failures));
        record.set("notes", strings(&self.notes));
        record.to_line()
    }

    /// Appends the JSON record to `path`.
    pub fn append_json(&self, path: &Path) -> Result<(), String> {
        let mut line = self.json(sysinfo::unix_ms() / 1000);
        line.push('\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // One write call: concurrent runs appending to one file do not interleave lines.
        file.write_all(line.as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

fn strings(items: &[String]) -> Value {
    Value::List(items.iter().map(|s| Value::Str(s.clone())).collect())
}

/// A value for the table: numbers with thousands separators.
fn display(value: &Value) -> String {
    match value {
        Value::Null => "unknown".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::U64(n) => group_thousands(&n.to_string()),
        Value::F64(x) if x.is_finite() => {
            let text = if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            };
            match text.split_once('.') {
                Some((int, frac)) => format!("{}.{frac}", group_thousands(int)),
                None => group_thousands(&text),
            }
        }
        Value::F64(_) => "unknown".to_string(),
        Value::Str(s) => s.clone(),
        Value::List(_) | Value::Object(_) => {
            let mut out = String::new();
            value.write(&mut out);
            out
        }
    }
}

fn group_thousands(digits: &str) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", digits),
    };
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands("0"), "0");
        assert_eq!(group_thousands("999"), "999");
        assert_eq!(group_thousands("1000"), "1,000");
        assert_eq!(group_thousands("-1234567"), "-1,234,567");
        assert_eq!(display(&Value::F64(12345.6)), "12,346");
        assert_eq!(display(&Value::F64(4.256)), "4.26");
        assert_eq!(display(&Value::Null), "unknown");
    }

    #[test]
    fn report_renders_both_ways() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let mut r = Report::new(
            "chat",
            "2 pairs".into(),
            "127.0.0.1:7700".into(),
            Some("--x \"y\"".into()),
        );
        r.param("connections", 4usize);
        r.figure("acked_per_s", "acked", 1234.5f64, "msg/s");
        r.latency("ack_latency_us", "send -> send_ack", &h);
        let table = r.table();
        assert!(table.contains("acked"), "{table}");
        assert!(table.contains("result: OK"), "{table}");
        let json = r.json(1);
        assert!(
            json.starts_with(r#"{"scenario":"chat","ok":true,"time_unix_s":1,"#),
            "{json}"
        );
        assert!(json.contains(r#""server_flags":"--x \"y\"""#), "{json}");
        assert!(
            json.contains(r#""ack_latency_us":{"count":1000,"p50":500,"#),
            "{json}"
        );
        let mut quiet = Histogram::<u64>::new_with_bounds(1, 1_000_000, 2).unwrap();
        quiet.record(7).unwrap();
        r.timeline(
            "deliver_timeline",
            "send -> deliver",
            std::time::Duration::from_millis(250),
            1_700_000_000_000,
            &[
                h.clone(),
                Histogram::new_with_bounds(1, 1_000_000, 2).unwrap(),
                quiet,
            ],
        );
        let table = r.table();
        assert!(
            table.contains("send -> deliver by 250 ms of the run (from unix ms 1700000000000)"),
            "{table}"
        );
        // The empty second window is shown, not skipped: the rows are times.
        assert!(table.contains("    0.250         0"), "{table}");
        assert!(table.contains("    0.500         1         7"), "{table}");
        let json = r.json(1);
        assert!(
            json.contains(
                r#""deliver_timeline":{"width_ms":250,"start_unix_ms":1700000000000,"windows":[{"count":1000,"p50":500,"#
            ),
            "{json}"
        );
        assert!(json.contains(r#"{"count":0,"p50":0,"#), "{json}");
        r.fail("lost 3 messages");
        assert!(r.table().contains("FAILED"));
        assert!(r.json(1).contains(r#""ok":false"#));
    }
}
