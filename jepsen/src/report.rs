//! What a run found, from its history: the shared checkers' verdict, counts, unavailability
//! per fault and recovery after each heal; written as `summary.txt` and as `report.html`
//! (throughput and latency over time, fault windows shaded; SVG drawn with plotters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use raftmq_check::queue::{QueueViolation, check_queue_history, duplicate_counts};

use crate::history::{Op, Type, queue_history};

/// One fault's window and what clients saw during it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    pub start: u64,
    pub stop: Option<u64>,
    /// The longest time without an acknowledged send, from the fault's start until the
    /// first acknowledgement after it (ms).
    pub unavailable: u64,
    /// From the heal to the first acknowledged send invoked after it (ms), if any came.
    pub recovery: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub nemesis: String,
    pub duration_ms: u64,
    pub invoked: u64,
    pub ok: u64,
    pub info: u64,
    pub deliveries: u64,
    pub lost: Vec<String>,
    pub violations: Vec<String>,
    /// Stored messages handed out more than once, messages stored twice (retried sends).
    pub redelivered: usize,
    pub stored_twice: usize,
    pub faults: Vec<Fault>,
    /// Problems that are not the history's: a node that did not come back, no recovery.
    pub liveness: Vec<String>,
    /// The transactional workload: (sent, decided commit, decided rollback, undecided,
    /// delivered).
    pub transactions: Option<(usize, usize, usize, usize, usize)>,
    /// The timer workload: (acknowledged, recalled, delivered, latest delivery after due ms).
    pub timers: Option<(usize, usize, usize, u64)>,
}

impl Summary {
    /// No violation and nothing stuck.
    pub fn valid(&self) -> bool {
        self.lost.is_empty() && self.violations.is_empty() && self.liveness.is_empty()
    }
}

/// The checks over a finished run's history: each workload's topic (`(topic, orderly)`) held
/// by broker group `group`.
pub fn analyze(ops: &[Op], topics: &[(&str, bool)], group: &str, nemesis: &str) -> Summary {
    let mut s = Summary {
        nemesis: nemesis.into(),
        duration_ms: ops.iter().map(|o| o.time).max().unwrap_or(0),
        ..Default::default()
    };
    for op in ops.iter().filter(|o| o.f == "send") {
        match op.kind {
            Type::Invoke => s.invoked += 1,
            Type::Ok => s.ok += 1,
            Type::Info | Type::Fail => s.info += 1,
        }
    }
    s.deliveries = ops.iter().filter(|o| o.f == "receive").count() as u64;
    for &(topic, orderly) in topics {
        let h = queue_history(ops, topic, group, orderly);
        for v in check_queue_history(&h) {
            match v {
                QueueViolation::Lost { id } => s.lost.push(id),
                v => s.violations.push(format!("{topic}: {v:?}")),
            }
        }
        let (again, twice) = duplicate_counts(&h);
        s.redelivered += again;
        s.stored_twice += twice;
    }
    s.faults = faults(ops);
    s
}

/// Adds the transactional workload's checks (`raftmq_check::txn`) to `s`.
pub fn add_transactions(s: &mut Summary, ops: &[Op]) {
    let h = crate::txn::txn_history(ops);
    for v in raftmq_check::txn::check_txn_history(&h, crate::txn::MAX_CHECKS) {
        s.violations.push(format!("{}: {v:?}", crate::txn::TOPIC));
    }
    let decided: Vec<&raftmq_check::txn::Decided> = h.decided.values().flatten().collect();
    s.transactions = Some((
        h.halves.len() + h.indeterminate.len(),
        decided.iter().filter(|d| d.commit).count(),
        decided.iter().filter(|d| !d.commit).count(),
        h.pending.values().map(Vec::len).sum(),
        h.deliveries.len(),
    ));
}

/// Adds the timer workload's checks (`raftmq_check::timer`) to `s`.
pub fn add_timers(s: &mut Summary, ops: &[Op]) {
    let h = crate::timers::timer_history(ops);
    for v in raftmq_check::timer::check_timer_history(&h) {
        s.violations
            .push(format!("{}: {v:?}", crate::timers::TOPIC));
    }
    let latest = h
        .deliveries
        .iter()
        .filter_map(|(b, at)| h.sent.get(b).map(|due| at.saturating_sub(*due)))
        .max()
        .unwrap_or(0);
    s.timers = Some((h.sent.len(), h.recalled.len(), h.deliveries.len(), latest));
}

/// Every fault window, with the unavailability and recovery clients saw.
fn faults(ops: &[Op]) -> Vec<Fault> {
    let acks: Vec<(u64, u64)> = {
        // (invoked at, acknowledged at) for every acknowledged send.
        let mut invoked: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut v = Vec::new();
        for op in ops.iter().filter(|o| o.f == "send") {
            let key = (op.process.as_str(), op.value.as_deref().unwrap_or(""));
            match op.kind {
                Type::Invoke => {
                    invoked.insert(key, op.time);
                }
                Type::Ok => v.push((invoked.get(&key).copied().unwrap_or(op.time), op.time)),
                _ => {}
            }
        }
        v.sort_by_key(|a| a.1);
        v
    };
    let mut out: Vec<Fault> = Vec::new();
    for op in ops.iter().filter(|o| o.process == "nemesis") {
        match op.f.as_str() {
            "start" => out.push(Fault {
                what: op.value.clone().unwrap_or_default(),
                start: op.time,
                stop: None,
                unavailable: 0,
                recovery: None,
            }),
            "stop" => {
                if let Some(f) = out.last_mut().filter(|f| f.stop.is_none()) {
                    f.stop = Some(op.time);
                }
            }
            _ => {}
        }
    }
    for f in &mut out {
        let end = f.stop.unwrap_or(f.start);
        // Gaps between acknowledgements from the start until the first one after the heal.
        let mut last = f.start;
        let mut worst = 0;
        for &(_, at) in acks.iter().filter(|a| a.1 > f.start) {
            worst = worst.max(at - last);
            last = at;
            if at > end {
                break;
            }
        }
        f.unavailable = worst;
        f.recovery = acks
            .iter()
            .find(|a| a.0 >= end)
            .map(|a| a.1.saturating_sub(end));
    }
    out
}

/// The text summary.
pub fn text(s: &Summary) -> String {
    let mut t = String::new();
    let verdict = if s.valid() { "VALID" } else { "INVALID" };
    let _ = writeln!(t, "raftmq-jepsen: {verdict}");
    let _ = writeln!(
        t,
        "nemesis {} for {:.1} s: {} sends invoked, {} acknowledged, {} unknown (timed out or failed), {} deliveries",
        s.nemesis,
        s.duration_ms as f64 / 1000.0,
        s.invoked,
        s.ok,
        s.info,
        s.deliveries
    );
    let _ = writeln!(
        t,
        "lost (acknowledged, never delivered): {}{}",
        s.lost.len(),
        if s.lost.is_empty() {
            String::new()
        } else {
            format!(" e.g. {:?}", &s.lost[..s.lost.len().min(10)])
        }
    );
    let _ = writeln!(
        t,
        "duplicates: {} stored messages delivered more than once, {} messages stored twice (retried sends)",
        s.redelivered, s.stored_twice
    );
    if let Some((sent, commit, rollback, pending, delivered)) = s.transactions {
        let _ = writeln!(
            t,
            "transactions: {sent} sent; decided {commit} commit, {rollback} rollback; {pending} undecided; {delivered} deliveries"
        );
    }
    if let Some((sent, recalled, delivered, latest)) = s.timers {
        let _ = writeln!(
            t,
            "timed messages: {sent} acknowledged, {recalled} recalled, {delivered} deliveries, the latest {latest} ms after its due time"
        );
    }
    let _ = writeln!(t, "other violations: {}", s.violations.len());
    for v in s.violations.iter().take(20) {
        let _ = writeln!(t, "  {v}");
    }
    for l in &s.liveness {
        let _ = writeln!(t, "liveness: {l}");
    }
    let _ = writeln!(t, "faults: {}", s.faults.len());
    for f in &s.faults {
        let _ = writeln!(
            t,
            "  {:>7.1}s–{:<7} {:<60} unavailable {:>6} ms  recovery {}",
            f.start as f64 / 1000.0,
            f.stop
                .map(|x| format!("{:.1}s", x as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            f.what,
            f.unavailable,
            f.recovery
                .map(|r| format!("{r} ms"))
                .unwrap_or_else(|| "none".into())
        );
    }
    if let Some(worst) = s.faults.iter().max_by_key(|f| f.unavailable) {
        let _ = writeln!(
            t,
            "worst unavailability: {} ms ({})",
            worst.unavailable, worst.what
        );
    }
    t
}

/// Per-second series from the history: acknowledged sends, and latency quantiles of the
/// sends acknowledged in that second (ms).
/// Points of a line: (seconds, value).
type Points = Vec<(f64, f64)>;
/// A line of a chart: its label, points and colour.
type Line<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn series(ops: &[Op]) -> (Points, Points, Points) {
    let mut invoked: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut per_sec: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let end = ops.iter().map(|o| o.time).max().unwrap_or(0) / 1000;
    for s in 0..=end {
        per_sec.insert(s, Vec::new());
    }
    for op in ops.iter().filter(|o| o.f == "send") {
        let key = (op.process.as_str(), op.value.as_deref().unwrap_or(""));
        match op.kind {
            Type::Invoke => {
                invoked.insert(key, op.time);
            }
            Type::Ok => {
                let lat = op.time - invoked.get(&key).copied().unwrap_or(op.time);
                per_sec.entry(op.time / 1000).or_default().push(lat);
            }
            _ => {}
        }
    }
    let mut rate = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (s, mut l) in per_sec {
        rate.push((s as f64, l.len() as f64));
        if !l.is_empty() {
            l.sort_unstable();
            let q = |f: f64| l[((l.len() - 1) as f64 * f) as usize] as f64;
            p50.push((s as f64, q(0.5).max(0.1)));
            p99.push((s as f64, q(0.99).max(0.1)));
        }
    }
    (rate, p50, p99)
}

fn chart(
    title: &str,
    y_label: &str,
    lines: &[Line<'_>],
    faults: &[Fault],
    x_max: f64,
    log_y: bool,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let y_max = lines
            .iter()
            .flat_map(|l| l.1.iter().map(|p| p.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60);
        macro_rules! draw {
            ($chart:expr, $lo:expr) => {{
                let mut c = $chart;
                c.configure_mesh()
                    .x_desc("seconds")
                    .y_desc(y_label)
                    .draw()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                for f in faults {
                    let stop = f.stop.unwrap_or(f.start) as f64 / 1000.0;
                    c.draw_series(std::iter::once(Rectangle::new(
                        [
                            (f.start as f64 / 1000.0, $lo),
                            (stop.max(f.start as f64 / 1000.0 + 0.2), y_max),
                        ],
                        RGBColor(255, 120, 120).mix(0.25).filled(),
                    )))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                for (name, pts, color) in lines {
                    let color = *color;
                    c.draw_series(LineSeries::new(pts.iter().copied(), color))
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .label(*name)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                }
                c.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }};
        }
        if log_y {
            draw!(
                b.build_cartesian_2d(0f64..x_max, (0.1f64..y_max).log_scale())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                0.1
            );
        } else {
            draw!(
                b.build_cartesian_2d(0f64..x_max, 0f64..y_max)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                0.0
            );
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The HTML page: verdict, counts, the two charts, the fault table.
pub fn html(s: &Summary, ops: &[Op]) -> anyhow::Result<String> {
    let (rate, p50, p99) = series(ops);
    let x_max = (s.duration_ms as f64 / 1000.0).max(1.0) + 1.0;
    let throughput = chart(
        "Acknowledged sends per second (faults shaded)",
        "sends/s",
        &[("acknowledged/s", &rate, BLUE)],
        &s.faults,
        x_max,
        false,
    )?;
    let latency = chart(
        "Send latency, by second of acknowledgement (faults shaded)",
        "ms (log)",
        &[("p50", &p50, GREEN), ("p99", &p99, RED)],
        &s.faults,
        x_max,
        true,
    )?;
    let mut rows = String::new();
    for f in &s.faults {
        let _ = write!(
            rows,
            "<tr><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.start as f64 / 1000.0,
            f.stop
                .map(|x| format!("{:.1}", x as f64 / 1000.0))
                .unwrap_or_else(|| "-".into()),
            escape(&f.what),
            f.unavailable,
            f.recovery
                .map(|r| r.to_string())
                .unwrap_or_else(|| "none".into())
        );
    }
    let verdict = if s.valid() { "VALID" } else { "INVALID" };
    Ok(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>raftmq-jepsen: {verdict}</title>\n\
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px}} .VALID{{color:#070}} .INVALID{{color:#a00}}</style>\n\
</head><body>\n<h1 id=\"verdict\" class=\"{verdict}\">raftmq-jepsen: {verdict}</h1>\n<pre id=\"summary\">{}</pre>\n\
<div id=\"throughput\">{throughput}</div>\n<div id=\"latency\">{latency}</div>\n\
<h2>Faults</h2>\n<table id=\"faults\"><tr><th>start s</th><th>healed s</th><th>fault</th><th>unavailable ms</th><th>recovery ms</th></tr>{rows}</table>\n\
</body></html>\n",
        escape(&text(s))
    ))
}

/// Writes `summary.txt` and `report.html` into `dir`.
pub fn write(dir: &Path, s: &Summary, ops: &[Op]) -> anyhow::Result<()> {
    std::fs::write(dir.join("summary.txt"), text(s))?;
    std::fs::write(dir.join("report.html"), html(s, ops)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(t: u64, p: &str, v: &str, ok: Option<(u32, u64)>) -> Vec<Op> {
        let op = |t, k, f: &str| Op::new(t, p, k, f).topic("T").value(v);
        let mut out = vec![op(t, Type::Invoke, "send")];
        out.push(match ok {
            Some((q, o)) => op(t + 5, Type::Ok, "send").at(q, o),
            None => op(t + 3000, Type::Info, "send").error("timeout"),
        });
        out
    }

    #[test]
    fn a_lost_message_and_a_fault_window_are_reported() {
        let mut ops = Vec::new();
        ops.extend(send(0, "p0", "a", Some((0, 0))));
        ops.push(Op::new(100, "nemesis", Type::Info, "start").value("kill [1] (leader)"));
        ops.extend(send(200, "p0", "b", None));
        ops.push(Op::new(1000, "nemesis", Type::Info, "stop").value("restart [1]"));
        ops.extend(send(1500, "p0", "c", Some((0, 1))));
        ops.push(
            Op::new(1600, "c0#0", Type::Ok, "receive")
                .topic("T")
                .value("a")
                .at(0, 0),
        );
        let s = analyze(&ops, &[("T", false)], "g1", "kill");
        assert!(!s.valid());
        assert_eq!(s.lost, vec!["c".to_string()]);
        assert_eq!(s.faults.len(), 1);
        // From the fault at 100 ms to the next acknowledgement at 1 505 ms.
        assert_eq!(s.faults[0].unavailable, 1405);
        assert_eq!(s.faults[0].recovery, Some(505));
        let page = html(&s, &ops).expect("html");
        assert!(page.contains("INVALID") && page.contains("<svg"));
        assert!(text(&s).contains("lost (acknowledged, never delivered): 1"));
    }
}
