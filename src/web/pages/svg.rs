//! Charts drawn by the server as inline SVG: a phase timeline, a line chart, grouped bars.
//! Every label is escaped; sizes are in a fixed viewBox that scales with the page.

use std::fmt::Write as _;

use super::esc;
use crate::store::Phase;

const W: f64 = 800.0;
const LEFT: f64 = 150.0;

/// Horizontal bars: each phase at its start offset, as wide as it took.
pub fn timeline(phases: &[Phase]) -> String {
    let Some(first) = phases.iter().map(|p| p.started_at).min() else {
        return String::new();
    };
    let end = phases
        .iter()
        .map(|p| (p.started_at - first).as_seconds_f64() + p.duration.as_secs_f64())
        .fold(0.0_f64, f64::max)
        .max(1e-3);
    let row = 22.0;
    let h = row * phases.len() as f64 + 24.0;
    let scale = (W - LEFT - 70.0) / end;
    let mut s = format!(
        "<svg class=\"chart timeline\" id=\"timeline\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"phase timeline\">"
    );
    for (i, p) in phases.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let x = LEFT + (p.started_at - first).as_seconds_f64() * scale;
        let w = (p.duration.as_secs_f64() * scale).max(1.5);
        let _ = write!(
            s,
            "<text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh}\" fill=\"#2f5fd0\" rx=\"2\"><title>{name}: {d}</title></rect>\
             <text x=\"{lx:.1}\" y=\"{ty:.1}\">{d}</text>",
            tx = LEFT - 6.0,
            ty = y + 13.0,
            name = esc(&p.name),
            bh = row - 6.0,
            d = crate::util::human_duration(p.duration),
            lx = x + w + 4.0,
        );
    }
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{:.1}\">0</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></svg>",
        h - 4.0,
        W - 70.0,
        h - 4.0,
        crate::util::human_duration(std::time::Duration::from_secs_f64(end))
    );
    s
}

/// A line chart of values in 0..=1 (shown as %), one point per labelled x.
pub fn percent_line(id: &str, points: &[(String, f64)]) -> String {
    let h = 220.0;
    let (top, bottom, left, right) = (10.0, 40.0, 40.0, 10.0);
    let pw = W - left - right;
    let ph = h - top - bottom;
    let mut s = format!(
        "<svg class=\"chart\" id=\"{}\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"pass rate over time\">",
        esc(id)
    );
    for pct in [0.0, 0.5, 1.0] {
        let y = top + ph * (1.0 - pct);
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e3e6ec\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            W - right,
            left - 4.0,
            y + 4.0,
            pct * 100.0
        );
    }
    let n = points.len();
    let x_of = |i: usize| {
        if n <= 1 {
            left + pw / 2.0
        } else {
            left + pw * i as f64 / (n - 1) as f64
        }
    };
    let coords: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, (_, v))| format!("{:.1},{:.1}", x_of(i), top + ph * (1.0 - v.clamp(0.0, 1.0))))
        .collect();
    if n > 1 {
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#1f7a3a\" stroke-width=\"2\" points=\"{}\"/>",
            coords.join(" ")
        );
    }
    let every = n.div_ceil(8).max(1);
    for (i, ((label, v), c)) in points.iter().zip(&coords).enumerate() {
        let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
        let _ = write!(
            s,
            "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3.5\" fill=\"#1f7a3a\"><title>{}: {:.0}%</title></circle>",
            esc(label),
            v * 100.0
        );
        if i % every == 0 || i == n - 1 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x_of(i),
                h - bottom + 16.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// Grouped horizontal bars: one group per label, one bar per series value (seconds).
pub fn grouped_bars(id: &str, series: &[&str], groups: &[(String, Vec<f64>)]) -> String {
    const COLOURS: [&str; 4] = ["#2f5fd0", "#7a9be6", "#b3261e", "#8a5a00"];
    let bar = 10.0;
    let gap = 8.0;
    let group_h = bar * series.len() as f64 + gap;
    let h = group_h * groups.len() as f64 + 30.0;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1e-3);
    let scale = (W - LEFT - 80.0) / max;
    let mut s = format!(
        "<svg class=\"chart\" id=\"{}\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"phase durations\">",
        esc(id)
    );
    for (gi, (label, values)) in groups.iter().enumerate() {
        let y0 = gi as f64 * group_h;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y0 + group_h / 2.0,
            esc(label)
        );
        for (si, v) in values.iter().enumerate() {
            let y = y0 + si as f64 * bar;
            let w = (v * scale).max(1.0);
            let d = crate::util::human_duration(std::time::Duration::from_secs_f64(v.max(0.0)));
            let _ = write!(
                s,
                "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {d}</title></rect>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{d}</text>",
                bar - 1.0,
                COLOURS[si % COLOURS.len()],
                esc(label),
                esc(series.get(si).copied().unwrap_or("")),
                LEFT + w + 4.0,
                y + bar - 1.5
            );
        }
    }
    let mut x = LEFT;
    for (si, name) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            h - 18.0,
            COLOURS[si % COLOURS.len()],
            x + 14.0,
            h - 9.0,
            esc(name)
        );
        x += 70.0;
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use time::macros::datetime;

    #[test]
    fn charts_escape_labels_and_draw_marks() {
        let phases = vec![
            Phase {
                name: "<boot>".into(),
                started_at: datetime!(2025-01-01 0:00 UTC),
                duration: Duration::from_secs(2),
            },
            Phase {
                name: "run".into(),
                started_at: datetime!(2025-01-01 0:00:02 UTC),
                duration: Duration::from_secs(3),
            },
        ];
        let t = timeline(&phases);
        assert!(t.contains("&lt;boot&gt;") && !t.contains("<boot>"));
        assert_eq!(t.matches("<rect").count(), 2);
        let l = percent_line("p", &[("a".into(), 1.0), ("b".into(), 0.5)]);
        assert!(l.contains("<polyline") && l.matches("<circle").count() == 2);
        let b = grouped_bars("b", &["p50", "p90"], &[("x".into(), vec![1.0, 2.0])]);
        assert_eq!(b.matches("<rect").count(), 4); // 2 bars + 2 legend swatches
    }
}
