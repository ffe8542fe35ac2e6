//! Inline SVG charts: a trend of daily rates against the target line.

use std::fmt::Write as _;

use super::esc;
use crate::aggregate::TARGET;

const W: f64 = 720.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;

/// A line of daily rates (`None`: no figure that day, the line breaks)
/// over 0–100 %, with the target as a dashed line and the first and last
/// date under the axis.
pub fn trend(points: &[(String, Option<f64>)]) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" \
aria-label=\"trend\"><rect x=\"{PAD}\" y=\"{PAD}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#ccc\"/>",
        w = W - 2.0 * PAD,
        h = H - 2.0 * PAD
    );
    let y = |v: f64| H - PAD - v.clamp(0.0, 1.0) * (H - 2.0 * PAD);
    let n = points.len().max(2) - 1;
    let x = |i: usize| PAD + i as f64 * (W - 2.0 * PAD) / n as f64;
    let _ = write!(
        svg,
        "<line class=\"target\" x1=\"{PAD}\" x2=\"{x2}\" y1=\"{t:.1}\" y2=\"{t:.1}\" stroke=\"#b00\" stroke-dasharray=\"6 4\"/>\
<text x=\"{x2}\" y=\"{ty:.1}\" text-anchor=\"end\" font-size=\"12\" fill=\"#b00\">目标 target {p:.0}%</text>",
        x2 = W - PAD,
        t = y(TARGET),
        ty = y(TARGET) - 4.0,
        p = TARGET * 100.0
    );
    for (label, v) in [("0%", 0.0), ("100%", 1.0)] {
        let _ = write!(
            svg,
            "<text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\" font-size=\"12\">{label}</text>",
            tx = PAD - 4.0,
            ty = y(v) + 4.0
        );
    }
    // One polyline per run of days with a figure; a lone day is a dot.
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for (i, (_, v)) in points.iter().enumerate() {
        match v {
            Some(v) => {
                if let Some(r) = runs.last_mut() {
                    r.push((x(i), y(*v)));
                }
            }
            None => runs.push(Vec::new()),
        }
    }
    for run in runs.iter().filter(|r| !r.is_empty()) {
        if let [(cx, cy)] = run.as_slice() {
            let _ = write!(
                svg,
                "<circle r=\"3\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" fill=\"#0a5\"/>"
            );
        } else {
            let pts: Vec<String> = run.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"#0a5\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let _ = write!(
            svg,
            "<text x=\"{PAD}\" y=\"{b}\" font-size=\"12\">{}</text><text x=\"{r}\" y=\"{b}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            esc(&first.0),
            esc(&last.0),
            b = H - PAD + 16.0,
            r = W - PAD
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The colour of an equipment state.
fn colour(state: &str) -> &'static str {
    match state {
        "running_nc" => "#0a5",
        "running_manual" => "#38c",
        "idle" => "#e5b400",
        _ => "#bbb",
    }
}

/// One bar per machine over `[from, to)`, coloured by state, with a legend.
pub fn timeline(from: i64, to: i64, machines: &[crate::enterprise::MachineTimeline]) -> String {
    let row = 22.0;
    // Two gateways of one enterprise may each have a "mill-01": then the
    // labels name the gateway too.
    let first = machines.first().map_or("", |m| m.gateway_id.as_str());
    let several = machines.iter().any(|m| m.gateway_id != first);
    let label = if several { 300.0 } else { 160.0 };
    let h = PAD + row * machines.len() as f64 + 30.0;
    let span = (to - from).max(1) as f64;
    let x = |ts: i64| label + ((ts.clamp(from, to) - from) as f64 / span) * (W - label - 10.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\" aria-label=\"timeline\">"
    );
    for (i, m) in machines.iter().enumerate() {
        let y = 10.0 + row * i as f64;
        let name = if several {
            format!("{} · {}", m.gateway_id, m.equipment)
        } else {
            m.equipment.clone()
        };
        let _ = write!(
            svg,
            "<text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            esc(&name),
            tx = label - 6.0,
            ty = y + 13.0
        );
        let last = m.until.unwrap_or(to);
        for (j, (ts, state)) in m.changes.iter().enumerate() {
            let end = m.changes.get(j + 1).map_or(last, |(t, _)| *t);
            let (x0, x1) = (x(*ts), x(end));
            if x1 > x0 {
                let _ = write!(
                    svg,
                    "<rect class=\"{s}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"16\" fill=\"{c}\"><title>{s}</title></rect>",
                    s = esc(state),
                    w = x1 - x0,
                    c = colour(state)
                );
            }
        }
    }
    let ly = h - 12.0;
    let mut lx = 10.0;
    for (state, zh) in [
        ("running_nc", "数控运行"),
        ("running_manual", "手动运行"),
        ("idle", "空闲"),
        ("offline", "离线"),
    ]
    .iter()
    {
        let _ = write!(
            svg,
            "<rect x=\"{lx}\" y=\"{y0}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{tx}\" y=\"{ly}\" font-size=\"12\">{zh} {state}</text>",
            colour(state),
            y0 = ly - 10.0,
            tx = lx + 16.0
        );
        // Each entry as wide as its text: a CJK character is about as
        // wide as the font size, a Latin one a little over half of it.
        lx += 16.0 + 12.0 * zh.chars().count() as f64 + 7.0 * (state.len() + 1) as f64 + 14.0;
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enterprise::MachineTimeline;

    fn machine(gateway_id: &str, until: Option<i64>) -> MachineTimeline {
        MachineTimeline {
            gateway_id: gateway_id.into(),
            equipment: "mill-01".into(),
            changes: vec![(0, "idle".into()), (500, "running_nc".into())],
            until,
        }
    }

    /// The width of each bar of `class`, in order.
    fn widths(svg: &str, class: &str) -> Vec<f64> {
        svg.split(&format!("<rect class=\"{class}\""))
            .skip(1)
            .filter_map(|r| r.split("width=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn a_gateway_that_went_down_draws_nothing_after_its_last_evidence() {
        let live = timeline(0, 1000, &[machine("gw1", None)]);
        let down = timeline(0, 1000, &[machine("gw1", Some(750))]);
        let (a, b) = (widths(&live, "running_nc"), widths(&down, "running_nc"));
        assert_eq!((a.len(), b.len()), (1, 1));
        // Half of the bar (500..1000) against a quarter (500..750).
        assert!((a[0] / b[0] - 2.0).abs() < 0.01, "{a:?} {b:?}");
        assert!(!live.contains("gw1 · mill-01"));
        // Two gateways with the same machine id: each label says which.
        let two = timeline(0, 1000, &[machine("gw1", None), machine("gw2", Some(750))]);
        assert!(two.contains("gw1 · mill-01") && two.contains("gw2 · mill-01"));
    }
}
