//! report.html: rendered from the report alone, self-contained (inline CSS
//! and SVG, no scripts, no external assets), Chinese labels first with
//! English alongside, laid out for A4 paper.

// Markup is written a line at a time, each ending in its own newline.
#![allow(clippy::write_with_newline)]

use std::fmt::Write;

use super::{pct, Day, EvidenceReport, Gap};
use crate::metrics::Ratio;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-11-28 08:00` from an RFC 3339 string.
fn short(ts: &str) -> String {
    ts.get(..16).unwrap_or(ts).replace('T', " ")
}

fn ratio_cell(r: &Ratio) -> String {
    match r.value {
        Some(_) => format!(
            "{} <span class=\"nd\">({}/{})</span>",
            pct(r),
            r.numerator,
            r.denominator
        ),
        None => format!(
            "— <span class=\"nd\">({})</span>",
            esc(r.reason.as_deref().unwrap_or(""))
        ),
    }
}

fn duration(ms: i64) -> String {
    let m = ms / 60_000;
    if m < 120 {
        format!("{m} min")
    } else if m < 48 * 60 {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    } else {
        format!("{:.1} d", ms as f64 / 86_400_000.0)
    }
}

const CSS: &str = r#"
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC", "Helvetica Neue", Arial, sans-serif;
       color: #1b1f24; font-size: 10.5pt; line-height: 1.45; margin: 0 auto; max-width: 186mm; padding: 8mm 0; background: #fff; }
h1 { font-size: 18pt; margin: 0 0 2mm; }
h1 .en, h2 .en, th .en, .label .en { font-weight: normal; color: #57606a; font-size: 0.8em; }
h2 { font-size: 13pt; border-bottom: 2px solid #0b5cad; padding-bottom: 1mm; margin: 7mm 0 3mm; }
section { break-inside: auto; }
table { border-collapse: collapse; width: 100%; margin: 2mm 0 3mm; font-size: 9pt; }
th, td { border: 1px solid #d0d7de; padding: 1.2mm 1.8mm; text-align: left; vertical-align: top; }
th { background: #f3f6f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.nd { color: #57606a; font-size: 0.9em; }
.meta td:first-child { width: 42mm; background: #f8fafc; }
.cards { display: grid; grid-template-columns: repeat(3, 1fr); gap: 3mm; margin: 2mm 0 3mm; }
.card { border: 1px solid #d0d7de; border-radius: 2mm; padding: 2.5mm 3mm; }
.card .label { font-size: 9pt; color: #1b1f24; }
.card .value { font-size: 20pt; font-weight: bold; color: #0b5cad; }
.card.verified .value { color: #1a7f37; }
.card.miss .value { color: #cf222e; }
.card .parts { font-size: 8.5pt; color: #57606a; }
.mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 8pt; word-break: break-all; }
.note { color: #57606a; font-size: 9pt; }
.ok { color: #1a7f37; font-weight: bold; }
.bad { color: #cf222e; font-weight: bold; }
svg { display: block; margin: 2mm 0; max-width: 100%; height: auto; }
svg text { font-family: inherit; }
@media print {
  body { padding: 0; max-width: none; }
  h2 { break-after: avoid; }
  table, .cards, svg, .keep { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"#;

pub fn render(r: &EvidenceReport) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let e = &r.enterprise;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"zh-CN\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>数字画像证据报告 Evidence report · {} · {} – {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        esc(&e.name),
        esc(&r.period.from),
        esc(&r.period.to)
    );
    let _ = write!(
        h,
        "<header id=\"top\"><h1>数字画像证据报告 <span class=\"en\">Digital portrait evidence report</span></h1>\n<p class=\"note\">{} · {} 至 {} <span class=\"en\">({} to {})</span></p></header>\n",
        esc(&e.name),
        esc(&r.period.from),
        esc(&r.period.to),
        esc(&r.period.from),
        esc(&r.period.to)
    );
    identity(&mut h, r);
    headline(&mut h, r);
    daily_chart(&mut h, r);
    plant(&mut h, r);
    timeline(&mut h, r);
    tables(&mut h, r);
    outages(&mut h, r);
    computation(&mut h, r);
    integrity(&mut h, r);
    h.push_str("</body>\n</html>\n");
    h
}

fn identity(h: &mut String, r: &EvidenceReport) {
    let e = &r.enterprise;
    let industry = if e.industry == "process" {
        "流程型 <span class=\"en\">process</span>"
    } else {
        "离散型 <span class=\"en\">discrete</span>"
    };
    let partial = if r.period.covered_end_ts < r.period.end_ts {
        format!(
            "<br><span class=\"note\">报告期尚未结束，证据截至 {} <span class=\"en\">(period not over; evidence up to {})</span></span>",
            esc(&short(&r.generated)),
            esc(&short(&r.generated))
        )
    } else {
        String::new()
    };
    let _ = write!(
        h,
        "<section id=\"identity\"><h2>企业与网关 <span class=\"en\">Enterprise and gateway</span></h2>\n<table class=\"meta\">\n\
<tr><td>企业名称 <span class=\"en\">Enterprise</span></td><td>{}</td></tr>\n\
<tr><td>统一社会信用代码 <span class=\"en\">USCC</span></td><td class=\"mono\">{}</td></tr>\n\
<tr><td>行政区划 <span class=\"en\">Region code</span></td><td>{}</td></tr>\n\
<tr><td>行业类型 <span class=\"en\">Industry</span></td><td>{industry}</td></tr>\n\
<tr><td>产业链 <span class=\"en\">Industrial chain</span></td><td>{}</td></tr>\n\
<tr><td>网关 <span class=\"en\">Gateway</span></td><td>{}</td></tr>\n\
<tr><td>网关公钥指纹 <span class=\"en\">Key fingerprint (SHA-256)</span></td><td class=\"mono\">{}</td></tr>\n\
<tr><td>报告期 <span class=\"en\">Period</span></td><td>{} 至 {} (UTC{}){partial}</td></tr>\n\
<tr><td>生成时间 <span class=\"en\">Generated</span></td><td>{}</td></tr>\n\
<tr><td>采集软件版本 <span class=\"en\">Agent version</span></td><td>zgsz-agent {}</td></tr>\n\
</table>\n",
        esc(&e.name),
        esc(&e.uscc),
        esc(&e.region_code),
        esc(if e.chain.is_empty() { "—" } else { &e.chain }),
        esc(&r.gateway.id),
        esc(&r.gateway.fingerprint),
        esc(&r.period.from),
        esc(&r.period.to),
        esc(&r.period.utc_offset),
        esc(&short(&r.generated)),
        esc(&r.agent_version),
    );
    let _ = write!(
        h,
        "<table><tr><th>配置哈希 <span class=\"en\">Config hash (SHA-256)</span></th><th>首个窗口 <span class=\"en\">First window</span></th><th>最后窗口 <span class=\"en\">Last window</span></th><th>窗口数 <span class=\"en\">Windows</span></th></tr>\n"
    );
    let off = r.period.utc_offset_s;
    for c in &r.config.history {
        let _ = writeln!(
            h,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            esc(&c.config_hash),
            esc(&short(&local(c.first_start_ts, off))),
            esc(&short(&local(c.last_end_ts, off))),
            c.windows
        );
    }
    let _ = writeln!(
        h,
        "<tr><td class=\"mono\">{}</td><td colspan=\"3\">当前配置 <span class=\"en\">current config</span>{}</td></tr></table></section>",
        esc(&r.config.current_hash),
        if r.config.history.last().map(|c| &c.config_hash) == Some(&r.config.current_hash) {
            ""
        } else {
            " · 与最后封存窗口不同 <span class=\"en\">(differs from the last sealed window)</span>"
        }
    );
}

fn local(ts: i64, offset_s: i32) -> String {
    let off = time::UtcOffset::from_whole_seconds(offset_s).unwrap_or(time::UtcOffset::UTC);
    crate::metrics::rfc3339(ts, off)
}

fn card(h: &mut String, class: &str, zh: &str, en: &str, r: &Ratio, extra: &str) {
    let _ = write!(
        h,
        "<div class=\"card {class}\"><div class=\"label\">{zh} <span class=\"en\">{en}</span></div><div class=\"value\">{}</div><div class=\"parts\">{}{extra}</div></div>\n",
        pct(r),
        match r.value {
            Some(_) => format!("{} / {}", r.numerator, r.denominator),
            None => esc(r.reason.as_deref().unwrap_or("")),
        }
    );
}

fn headline(h: &mut String, r: &EvidenceReport) {
    let hl = &r.headline;
    h.push_str("<section id=\"headline\"><h2>核心指标 <span class=\"en\">Headline figures</span></h2>\n<div class=\"cards\">\n");
    card(
        h,
        "",
        "关键工序数控化率（申报）",
        "CNC rate, declared",
        &hl.cnc_rate_declared,
        "",
    );
    let target = match hl.verified_meets_target {
        Some(true) => " · <span class=\"ok\">≥ 65% 达标 met</span>",
        Some(false) => " · <span class=\"bad\">&lt; 65% 未达标 not met</span>",
        None => "",
    };
    let class = if hl.verified_meets_target == Some(false) {
        "verified miss"
    } else {
        "verified"
    };
    card(
        h,
        class,
        "关键工序数控化率（核验）",
        "CNC rate, verified",
        &hl.cnc_rate_verified,
        target,
    );
    card(
        h,
        "",
        "设备联网率",
        "Networking rate",
        &hl.networking_rate,
        "",
    );
    card(
        h,
        "",
        "关键工序设备联网率",
        "Networking rate, key",
        &hl.networking_rate_key,
        "",
    );
    card(
        h,
        "",
        "数控时间占比",
        "NC time share",
        &hl.nc_time_share,
        "",
    );
    card(
        h,
        "",
        "数据完整率",
        "Data completeness",
        &hl.completeness,
        "",
    );
    let sealed = r.days.iter().filter(|d| d.status == "sealed").count();
    let _ = write!(
        h,
        "</div>\n<p class=\"note\">申报值来自工厂模型（具备数控能力的设备）；核验值来自设备数据（报告期内确实在数控状态下运行且联网的设备）。共 {} 天，其中 {sealed} 天已封存上链。<span class=\"en\">Declared comes from the plant model (NC-capable equipment); verified from machine evidence (equipment that actually ran under NC while networked). {} day(s), {sealed} sealed on the digest chain.</span></p></section>\n",
        r.days.len(),
        r.days.len()
    );
}

/// One day of the chart: (date, declared, verified, networking, partial).
type ChartPoint = (String, Option<f64>, Option<f64>, Option<f64>, bool);

fn chart_points(days: &[Day]) -> Vec<ChartPoint> {
    days.iter()
        .map(|d| {
            let i = &d.metrics["indicators"];
            let v = |n: &str| i[n]["value"].as_f64();
            (
                d.date.clone(),
                v("cnc_rate_declared"),
                v("cnc_rate_verified"),
                v("networking_rate"),
                d.status == "partial",
            )
        })
        .collect()
}

#[allow(
    clippy::too_many_lines,
    reason = "draws one SVG chart element by element; not split yet"
)]
fn daily_chart(h: &mut String, r: &EvidenceReport) {
    let pts = chart_points(&r.days);
    let (w, ht) = (700.0f64, 310.0f64);
    let (l, rt, t, b) = (52.0, 16.0, 50.0, 46.0);
    let pw = w - l - rt;
    let ph = ht - t - b;
    let n = pts.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            l + pw / 2.0
        } else {
            l + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| t + ph * (1.0 - v.clamp(0.0, 1.0));
    let _ = write!(
        h,
        "<section id=\"daily\" class=\"keep\"><h2>每日趋势 <span class=\"en\">Daily figures</span></h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"每日关键工序数控化率与设备联网率 Daily CNC rate and networking rate\">\n<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{ht}\" fill=\"#ffffff\"/>\n"
    );
    // Grid and y axis.
    for k in 0..=5 {
        let v = k as f64 / 5.0;
        let _ = write!(
            h,
            "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#e1e4e8\" stroke-width=\"1\"/><text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#444\">{4}%</text>\n",
            y(v),
            l + pw,
            l - 6.0,
            y(v) + 4.0,
            k * 20
        );
    }
    let _ = write!(
        h,
        "<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{0}\" stroke=\"#444\"/><line x1=\"{l}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#444\"/>\n<text x=\"14\" y=\"{2}\" font-size=\"11\" fill=\"#444\" transform=\"rotate(-90 14 {2})\" text-anchor=\"middle\">比率 Rate (%)</text>\n<text x=\"{3}\" y=\"{4}\" font-size=\"11\" fill=\"#444\" text-anchor=\"middle\">日期 Date ({5})</text>\n",
        t + ph,
        l + pw,
        t + ph / 2.0,
        l + pw / 2.0,
        ht - 6.0,
        esc(&r.period.utc_offset)
    );
    // X labels, at most ~10.
    let step = n.div_ceil(10).max(1);
    for (i, p) in pts.iter().enumerate() {
        if i % step == 0 || i == n - 1 {
            let _ = write!(
                h,
                "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#444\"/><text x=\"{0:.1}\" y=\"{3}\" font-size=\"10.5\" text-anchor=\"middle\" fill=\"#444\">{4}</text>\n",
                x(i),
                t + ph,
                t + ph + 4.0,
                t + ph + 16.0,
                esc(p.0.get(5..).unwrap_or(&p.0))
            );
        }
    }
    // Target line.
    let _ = write!(
        h,
        "<line x1=\"{l}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#cf222e\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/><text x=\"{2}\" y=\"{3:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#cf222e\">目标 Target 65%</text>\n",
        y(super::TARGET),
        l + pw,
        l + pw - 4.0,
        y(super::TARGET) - 5.0
    );
    let series: [(&str, &str, &str, usize); 3] = [
        ("#8c959f", "5 3", "申报数控化率 CNC rate, declared", 1),
        ("#0b5cad", "", "核验数控化率 CNC rate, verified", 2),
        ("#1a7f37", "2 2", "设备联网率 Networking rate", 3),
    ];
    for (color, dash, _, idx) in series {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, p) in pts.iter().enumerate() {
            let v = match idx {
                1 => p.1,
                2 => p.2,
                _ => p.3,
            };
            match v {
                // The day so far: a hollow marker, not joined to the line.
                Some(v) if p.4 => {
                    pen_down = false;
                    let _ = write!(
                        h,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#ffffff\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                        x(i),
                        y(v)
                    );
                }
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i),
                        y(v)
                    );
                    pen_down = true;
                    let _ = write!(
                        h,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                        x(i),
                        y(v)
                    );
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = writeln!(
                h,
                "<path d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{}/>",
                path.trim_end(),
                if dash.is_empty() {
                    String::new()
                } else {
                    format!(" stroke-dasharray=\"{dash}\"")
                }
            );
        }
    }
    // Legend.
    let mut lx = l;
    for (color, dash, label, _) in series {
        let _ = write!(
            h,
            "<line x1=\"{lx}\" y1=\"16\" x2=\"{0}\" y2=\"16\" stroke=\"{color}\" stroke-width=\"2.5\"{1}/><text x=\"{2}\" y=\"20\" font-size=\"11\" fill=\"#1b1f24\">{label}</text>\n",
            lx + 22.0,
            if dash.is_empty() {
                String::new()
            } else {
                format!(" stroke-dasharray=\"{dash}\"")
            },
            lx + 27.0
        );
        lx += 205.0;
    }
    if pts.iter().any(|p| p.4) {
        let _ = write!(
            h,
            "<circle cx=\"{0}\" cy=\"33\" r=\"3.5\" fill=\"#ffffff\" stroke=\"#444\" stroke-width=\"1.5\"/><text x=\"{1}\" y=\"37\" font-size=\"10.5\" fill=\"#444\">当日进行中 day so far</text>\n",
            l + 11.0,
            l + 27.0
        );
    }
    h.push_str("</svg>\n<table><tr><th>日期 <span class=\"en\">Date</span></th><th>状态 <span class=\"en\">Status</span></th><th>申报 <span class=\"en\">Declared</span></th><th>核验 <span class=\"en\">Verified</span></th><th>联网率 <span class=\"en\">Networking</span></th><th>数控时间占比 <span class=\"en\">NC time share</span></th><th>完整率 <span class=\"en\">Completeness</span></th></tr>\n");
    for d in &r.days {
        let i = &d.metrics["indicators"];
        let cell = |n: &str| match serde_json::from_value::<Ratio>(i[n].clone()) {
            Ok(r) => ratio_cell(&r),
            Err(_) => "?".into(),
        };
        let status = match d.status.as_str() {
            "sealed" => "已封存 <span class=\"en\">sealed</span>",
            "partial" => "进行中 <span class=\"en\">so far</span>",
            _ => "重算 <span class=\"en\">recomputed</span>",
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{status}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&d.date),
            cell("cnc_rate_declared"),
            cell("cnc_rate_verified"),
            cell("networking_rate"),
            cell("nc_time_share"),
            cell("completeness")
        );
    }
    h.push_str("</table></section>\n");
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "cnc" => "数控机床 CNC",
        "plc" => "PLC 控制 PLC",
        "dcs" => "DCS 控制 DCS",
        "robot" => "工业机器人 robot",
        "manual" => "手工 manual",
        _ => "其他 other",
    }
}

fn plant(h: &mut String, r: &EvidenceReport) {
    h.push_str("<section id=\"plant\"><h2>工厂模型 <span class=\"en\">Plant model</span></h2>\n<table><tr><th>工序 <span class=\"en\">Process</span></th><th>关键工序 <span class=\"en\">Key</span></th><th>设备 <span class=\"en\">Equipment</span></th></tr>\n");
    for p in &r.plant.processes {
        let members: Vec<String> = r
            .plant
            .equipment
            .iter()
            .filter(|e| e.process == p.id)
            .map(|e| esc(&e.id))
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{} <span class=\"nd\">{}</span></td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            esc(&p.id),
            if p.key {
                "是 <span class=\"en\">yes</span>"
            } else {
                "否 <span class=\"en\">no</span>"
            },
            members.join(", ")
        );
    }
    h.push_str("</table>\n<table><tr><th>设备 <span class=\"en\">Equipment</span></th><th>类型 <span class=\"en\">Kind</span></th><th>数控能力 <span class=\"en\">NC-capable</span></th><th>数据来源 <span class=\"en\">Device</span></th><th>判定规则 <span class=\"en\">Rules</span></th></tr>\n");
    for e in &r.plant.equipment {
        let _ = writeln!(
            h,
            "<tr><td>{} <span class=\"nd\">{}</span></td><td>{}</td><td>{}</td><td>{} <span class=\"nd\">{} · {} ms</span></td><td class=\"mono\">{}</td></tr>",
            esc(&e.name),
            esc(&e.id),
            kind_label(&e.kind),
            if e.nc_capable { "是 <span class=\"en\">yes</span>" } else { "否 <span class=\"en\">no</span>" },
            esc(&e.device),
            esc(&e.device_address),
            e.poll_interval_ms,
            esc(&e.rules)
        );
    }
    h.push_str("</table></section>\n");
}

const STATE_COLORS: [(&str, &str, &str); 4] = [
    ("offline", "#afb8c1", "离线 offline"),
    ("idle", "#f2cc60", "空闲 idle"),
    ("running_manual", "#f0883e", "手动运行 running, manual"),
    ("running_nc", "#2da44e", "数控运行 running, NC"),
];

fn timeline(h: &mut String, r: &EvidenceReport) {
    let rows = &r.timeline.equipment;
    let (w, l, rt, top, row_h) = (700.0f64, 120.0f64, 10.0f64, 34.0f64, 22.0f64);
    let pw = w - l - rt;
    let ht = top + row_h * rows.len() as f64 + 34.0;
    let (s, e) = (
        r.period.start_ts,
        r.period.covered_end_ts.max(r.period.start_ts + 1),
    );
    let x = |ts: i64| l + pw * ((ts - s) as f64 / (e - s) as f64).clamp(0.0, 1.0);
    let _ = write!(
        h,
        "<section id=\"timeline\" class=\"keep\"><h2>设备状态时间线 <span class=\"en\">Equipment state timeline</span></h2>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"设备状态时间线 Equipment state timeline\">\n<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{ht}\" fill=\"#ffffff\"/>\n"
    );
    let mut lx = l;
    for (_, color, label) in STATE_COLORS {
        let _ = write!(
            h,
            "<rect x=\"{lx}\" y=\"8\" width=\"14\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"18\" font-size=\"11\" fill=\"#1b1f24\">{label}</text>\n",
            lx + 18.0
        );
        lx += 140.0;
    }
    for (i, row) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let name = r
            .plant
            .equipment
            .iter()
            .find(|p| p.id == row.id)
            .map(|p| p.name.as_str())
            .unwrap_or(&row.id);
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#1b1f24\">{}</text>\n",
            l - 6.0,
            y + row_h / 2.0 + 4.0,
            esc(name)
        );
        for (a, b, state) in &row.segments {
            let color = STATE_COLORS
                .iter()
                .find(|c| c.0 == state)
                .map(|c| c.1)
                .unwrap_or("#ffffff");
            let _ = write!(
                h,
                "<rect x=\"{:.2}\" y=\"{:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{color}\"/>",
                x(*a),
                y + 2.0,
                (x(*b) - x(*a)).max(0.3),
                row_h - 4.0
            );
        }
        h.push('\n');
    }
    // Time axis: ticks at day boundaries (or every few hours within a day).
    let axis_y = top + row_h * rows.len() as f64 + 2.0;
    let _ = writeln!(
        h,
        "<line x1=\"{l}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#444\"/>",
        l + pw
    );
    let span = e - s;
    let tick = if span <= 2 * 86_400_000 {
        3 * 3_600_000
    } else {
        86_400_000 * ((span / 86_400_000 + 9) / 10).max(1)
    };
    let off = i64::from(r.period.utc_offset_s) * 1000;
    let mut ts = s;
    while ts <= e {
        let label = local(ts, r.period.utc_offset_s);
        let text = if tick < 86_400_000 {
            label.get(11..16).unwrap_or("").to_string()
        } else {
            label.get(5..10).unwrap_or("").to_string()
        };
        let _ = write!(
            h,
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#444\"/><text x=\"{0:.1}\" y=\"{3}\" font-size=\"10.5\" text-anchor=\"middle\" fill=\"#444\">{4}</text>\n",
            x(ts),
            axis_y,
            axis_y + 4.0,
            axis_y + 16.0,
            esc(&text)
        );
        ts = (ts + off) / tick * tick + tick - off;
    }
    let _ = write!(
        h,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#444\" text-anchor=\"middle\">时间 Time (UTC{})</text>\n</svg>\n<p class=\"note\">每个 {} 的时段显示设备在其中停留最久的状态。<span class=\"en\">Each {} slot shows the state the equipment spent most of it in.</span></p></section>\n",
        l + pw / 2.0,
        axis_y + 30.0,
        esc(&r.period.utc_offset),
        duration(r.timeline.resolution_ms),
        duration(r.timeline.resolution_ms)
    );
}

fn tables(h: &mut String, r: &EvidenceReport) {
    h.push_str("<section id=\"utilisation\"><h2>利用率与数控时间占比 <span class=\"en\">Utilisation and NC time share</span></h2>\n<table><tr><th>工序 <span class=\"en\">Process</span></th><th>关键 <span class=\"en\">Key</span></th><th>设备 <span class=\"en\">Eq.</span></th><th>数控能力 <span class=\"en\">NC-cap.</span></th><th>核验数控 <span class=\"en\">Verified NC</span></th><th>利用率 <span class=\"en\">Utilisation</span></th><th>数控时间占比 <span class=\"en\">NC time share</span></th></tr>\n");
    for p in &r.processes {
        let _ = writeln!(
            h,
            "<tr><td>{} <span class=\"nd\">{}</span></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&p.name),
            esc(&p.id),
            if p.key { "是" } else { "否" },
            p.equipment,
            p.nc_capable,
            p.verified_nc,
            ratio_cell(&p.utilisation),
            ratio_cell(&p.nc_time_share)
        );
    }
    h.push_str("</table>\n<table><tr><th>设备 <span class=\"en\">Equipment</span></th><th>离线 <span class=\"en\">Offline</span></th><th>空闲 <span class=\"en\">Idle</span></th><th>手动 <span class=\"en\">Manual</span></th><th>数控 <span class=\"en\">NC</span></th><th>利用率 <span class=\"en\">Utilisation</span></th><th>数控时间占比 <span class=\"en\">NC time share</span></th><th>完整率 <span class=\"en\">Completeness</span></th><th>核验 <span class=\"en\">Verified</span></th></tr>\n");
    let hrs = |ms: u64| format!("{:.1} h", ms as f64 / 3_600_000.0);
    for e in &r.equipment {
        let _ = writeln!(
            h,
            "<tr><td>{} <span class=\"nd\">{}</span></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{} <span class=\"nd\">{}/{} 天 days</span></td></tr>",
            esc(&e.name),
            esc(&e.id),
            hrs(e.time_ms.offline),
            hrs(e.time_ms.idle),
            hrs(e.time_ms.running_manual),
            hrs(e.time_ms.running_nc),
            ratio_cell(&e.utilisation),
            ratio_cell(&e.nc_time_share),
            ratio_cell(&e.completeness),
            if e.verified_nc { "<span class=\"ok\">✓</span>" } else { "✗" },
            e.days_verified,
            e.days
        );
    }
    h.push_str("</table><p class=\"note\">利用率 = 运行时间 ÷ 日历时间；数控时间占比 = 数控运行时间 ÷ 运行时间。<span class=\"en\">Utilisation = running time ÷ calendar time; NC time share = time running under NC ÷ time running.</span></p></section>\n");
}

fn gap_rows(h: &mut String, gaps: &[Gap], with_equipment: bool) {
    for g in gaps {
        let _ = writeln!(
            h,
            "<tr>{}<td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            if with_equipment {
                format!("<td>{}</td>", esc(g.equipment.as_deref().unwrap_or("")))
            } else {
                String::new()
            },
            esc(&short(&g.start)),
            esc(&short(&g.end)),
            duration(g.end_ts - g.start_ts)
        );
    }
}

fn outages(h: &mut String, r: &EvidenceReport) {
    let o = &r.outages;
    h.push_str("<section id=\"outages\"><h2>中断与数据缺口 <span class=\"en\">Outages and data gaps</span></h2>\n");
    let _ = write!(
        h,
        "<h3>采集程序停机 <span class=\"en\">Agent down</span> ({})</h3>\n<p class=\"note\">这些时段内没有任何设备被采集（网关或采集程序未运行），设备按离线计。<span class=\"en\">No equipment was evaluated at all (gateway or agent not running); equipment counts as offline.</span></p>\n",
        o.agent_down.len()
    );
    if !o.agent_down.is_empty() {
        h.push_str("<table><tr><th>开始 <span class=\"en\">From</span></th><th>结束 <span class=\"en\">To</span></th><th>时长 <span class=\"en\">Duration</span></th></tr>\n");
        gap_rows(h, &o.agent_down, false);
        h.push_str("</table>\n");
    }
    let _ = write!(
        h,
        "<h3>设备离线 <span class=\"en\">Device down</span> ({})</h3>\n<p class=\"note\">采集程序运行中，但设备连续三个采集周期以上无有效数据（断电、断网或控制器故障）。<span class=\"en\">The agent ran but the equipment gave no good data for more than three poll intervals (power, network or controller).</span></p>\n",
        o.device_down.len() as u64 + o.device_down_omitted
    );
    if !o.device_down.is_empty() {
        h.push_str("<table><tr><th>设备 <span class=\"en\">Equipment</span></th><th>开始 <span class=\"en\">From</span></th><th>结束 <span class=\"en\">To</span></th><th>时长 <span class=\"en\">Duration</span></th></tr>\n");
        gap_rows(h, &o.device_down, true);
        h.push_str("</table>\n");
    }
    if o.device_down_omitted > 0 {
        let _ = writeln!(
            h,
            "<p class=\"note\">另有 {} 条未列出 <span class=\"en\">({} more not listed)</span></p>",
            o.device_down_omitted, o.device_down_omitted
        );
    }
    let u = &o.uplink;
    let _ = write!(
        h,
        "<h3>上行链路中断 <span class=\"en\">Uplink down</span> ({})</h3>\n",
        u.down.len()
    );
    if !u.down.is_empty() {
        h.push_str("<table><tr><th>开始 <span class=\"en\">From</span></th><th>结束 <span class=\"en\">To</span></th><th>时长 <span class=\"en\">Duration</span></th></tr>\n");
        gap_rows(h, &u.down, false);
        h.push_str("</table>\n");
    }
    let _ = write!(
        h,
        "<h3>上行链路 <span class=\"en\">Uplink</span></h3>\n<p class=\"note\">{}</p>\n<table class=\"meta\"><tr><td>待发送消息 <span class=\"en\">Waiting in outbox</span></td><td class=\"num\">{}</td></tr><tr><td>已确认消息 <span class=\"en\">Acknowledged</span></td><td class=\"num\">{}</td></tr><tr><td>最后确认 <span class=\"en\">Last PUBACK</span></td><td>{}</td></tr><tr><td>溢出丢弃 <span class=\"en\">Evicted</span></td><td class=\"num\">{} 条消息 rows ({} 读数 readings, {} 指标 metrics)</td></tr><tr><td>最大序号 <span class=\"en\">Last seq</span></td><td class=\"num\">{}</td></tr></table></section>\n",
        esc(&u.note),
        u.outbox_rows,
        u.acked_rows,
        u.last_ack_ts
            .map(|t| esc(&short(&local(t, r.period.utc_offset_s))))
            .unwrap_or_else(|| "—".into()),
        u.evicted_rows,
        u.evicted_readings,
        u.evicted_metrics,
        u.last_seq
    );
}

fn computation(h: &mut String, r: &EvidenceReport) {
    h.push_str("<section id=\"computation\"><h2>计算方法 <span class=\"en\">How each figure is computed</span></h2>\n<table><tr><th>指标 <span class=\"en\">Figure</span></th><th>公式 <span class=\"en\">Formula</span></th><th>本报告数值 <span class=\"en\">This report</span></th></tr>\n");
    for c in &r.computation {
        let _ = writeln!(
            h,
            "<tr><td>{} <span class=\"en\">{}</span></td><td>{}<br><span class=\"en\">{}</span></td><td>{}</td></tr>",
            esc(&c.label_zh),
            esc(&c.label_en),
            esc(&c.formula_zh),
            esc(&c.formula_en),
            esc(&c.substituted)
        );
    }
    h.push_str("</table><p class=\"note\">设备状态：每个采集周期按判定规则归为 离线 / 空闲 / 手动运行 / 数控运行；三个周期无有效数据即为离线。某日“核验数控”= 具备数控能力、当日联网、且当日有数控运行时间。<span class=\"en\">Each poll cycle puts equipment in one of offline / idle / running manual / running NC by its rules; three poll intervals without good data make it offline. A day's \"verified NC\" = NC-capable, networked that day, and some time running under NC that day.</span></p></section>\n");
}

fn integrity(h: &mut String, r: &EvidenceReport) {
    let entries = &r.chain.entries;
    let _ = write!(
        h,
        "<section id=\"integrity\"><h2>完整性与核验 <span class=\"en\">Integrity and verification</span></h2>\n<p>每个已结束的小时与日窗口的指标及其背后的状态变化都以 SHA-256 串成哈希链（每项包含前一项的摘要），并随指标消息发送给平台。本报告由网关私钥签名（Ed25519，<span class=\"mono\">report.json.sig</span>）。<span class=\"en\">Every closed hour and day window's figures and the state changes behind them are chained with SHA-256 (each entry includes the previous digest) and sent with the metrics messages. This report is signed with the gateway's Ed25519 key (report.json.sig).</span></p>\n<p class=\"note\">核验 <span class=\"en\">Check</span>: <span class=\"mono\">zgsz-agent verify DIR --pubkey {}</span></p>\n<table class=\"meta\"><tr><td>链条目 <span class=\"en\">Chain entries</span></td><td class=\"num\">{}</td></tr>",
        esc(&r.gateway.public_key),
        entries.len()
    );
    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
        let _ = write!(
            h,
            "<tr><td>首项 <span class=\"en\">First</span></td><td class=\"mono\">#{} prev {}</td></tr><tr><td>末项 <span class=\"en\">Last</span></td><td class=\"mono\">#{} {}</td></tr>",
            first.seal.index,
            esc(&first.seal.prev),
            last.seal.index,
            esc(&last.seal.digest)
        );
    }
    h.push_str("</table>\n<table><tr><th>日期 <span class=\"en\">Day</span></th><th>链序号 <span class=\"en\">Index</span></th><th>日窗口摘要 <span class=\"en\">Day digest</span></th></tr>\n");
    for d in &r.days {
        let seal = &d.metrics["seal"];
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"mono\">{}</td></tr>",
            esc(&d.date),
            seal["index"]
                .as_u64()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "—".into()),
            esc(seal["digest"].as_str().unwrap_or("未封存 not sealed"))
        );
    }
    h.push_str("</table></section>\n");
}
