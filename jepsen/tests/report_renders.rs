//! The HTML report renders in a real browser: a report is written from a history with sends,
//! deliveries and two fault windows, opened in headless Chromium, and the page it draws is
//! checked (the DOM after rendering has both charts with their shaded fault windows and lines;
//! the screenshot is a real picture, not a blank page). The screenshot is kept at
//! `target/tmp/jepsen-report.png`.
//!
//! Needs `chromium` (`.ci/run` installs Debian's package).

use std::process::Command;

use raftmq_jepsen::history::{Op, Type};
use raftmq_jepsen::report;

fn history() -> Vec<Op> {
    let mut ops = Vec::new();
    let mut offset = 0;
    for i in 0..4000u64 {
        let t = i * 5;
        let v = format!("p0-{i}");
        ops.push(Op::new(t, "p0", Type::Invoke, "send").value(&v));
        // No acknowledgements while the first fault holds.
        if (5_000..7_000).contains(&t) {
            ops.push(
                Op::new(t + 3000, "p0", Type::Info, "send")
                    .value(&v)
                    .error("timeout"),
            );
            continue;
        }
        ops.push(
            Op::new(t + 2, "p0", Type::Ok, "send")
                .value(&v)
                .at(0, offset),
        );
        ops.push(
            Op::new(t + 20, "c0#0", Type::Ok, "receive")
                .value(&v)
                .at(0, offset),
        );
        offset += 1;
    }
    ops.push(Op::new(5_000, "nemesis", Type::Info, "start").value("kill [1] (leader)"));
    ops.push(Op::new(7_000, "nemesis", Type::Info, "stop").value("restart [1]"));
    ops.push(Op::new(12_000, "nemesis", Type::Info, "start").value("pause [2] (one)"));
    ops.push(Op::new(14_000, "nemesis", Type::Info, "stop").value("resume [2]"));
    ops.sort_by_key(|o| o.time);
    ops
}

fn chromium(args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .output()
        .expect("chromium must be installed to check the report renders (apt-get install chromium)")
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ops = history();
    let s = report::analyze(&ops, &[("T", false)], "g1", "kill");
    assert!(s.valid(), "{}", report::text(&s));
    assert_eq!(s.faults.len(), 2);
    report::write(dir.path(), &s, &ops).expect("write the report");
    let url = format!("file://{}", dir.path().join("report.html").display());

    // The DOM as the browser built it.
    let dom = chromium(&["--dump-dom", &url]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("id=\"verdict\" class=\"VALID\""), "verdict");
    for chart in ["throughput", "latency"] {
        let at = dom.find(&format!("id=\"{chart}\"")).expect(chart);
        let svg = &dom[at..];
        let end = svg.find("</svg>").expect("a whole svg");
        let svg = &svg[..end];
        // Two shaded fault windows (translucent red rectangles), and the data lines.
        assert!(
            svg.matches("opacity=\"0.25\"").count() >= 2,
            "{chart}: fault windows shaded"
        );
        assert!(svg.contains("<polyline"), "{chart}: a data line");
    }
    assert!(dom.contains("kill [1] (leader)") && dom.contains("pause [2] (one)"));

    // The picture: kept, and not a blank page.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("jepsen-report.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let out = chromium(&[&arg, "--window-size=1100,1200", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let px = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let mut colors = std::collections::BTreeSet::new();
    let mut reddish = 0usize;
    for p in px.chunks(channels) {
        colors.insert((p[0], p[1], p[2]));
        // The shaded windows: light red over white.
        if p[0] > 230 && p[1] < 225 && p[1] > 150 && p[2] < 225 {
            reddish += 1;
        }
    }
    assert!(
        colors.len() > 20,
        "a picture, not a blank page ({} colours)",
        colors.len()
    );
    assert!(
        reddish > 5_000,
        "fault windows drawn ({reddish} light red pixels)"
    );
}
