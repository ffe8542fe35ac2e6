//! Server-rendered pages for the people at the city platform: 中文 first,
//! English beside it, as the evidence report; charts as inline SVG; no
//! JavaScript. Each page is a pure function of the figures it shows, so
//! the JSON API and the pages cannot disagree.

mod chart;

use std::fmt::Write as _;

use crate::aggregate::{AreaFigures, Combined, TARGET};
use crate::export::{district_name, CITY};

pub use chart::trend;

/// `s` with the five HTML-special characters escaped.
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

/// A rate as a percentage with one decimal, or a dash.
pub fn pct(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{:.1}%", v * 100.0))
}

/// A timestamp (ms since the epoch) in China Standard Time, the zone the
/// programme's days are counted in: `2026-11-30 16:04 (UTC+8)`.
pub fn when(ms: i64) -> String {
    let secs = ms.div_euclid(1000) + 8 * 3600;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} (UTC+8)",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Links to the periods people ask for, ending on `last` (YYYY-MM-DD): the
/// day, the week (seven days), the month and the year to date, and every
/// day stored; `extra` is appended to each query (e.g. `&sort=gap`).
pub fn period_links(last: &str, extra: &str) -> String {
    let parts: Vec<i64> = last.split('-').filter_map(|p| p.parse().ok()).collect();
    let [y, m, d] = parts.as_slice() else {
        return String::new();
    };
    let date = |(y, m, d): (i64, i64, i64)| format!("{y:04}-{m:02}-{d:02}");
    let week = date(civil(days_from_civil(*y, *m, *d) - 6));
    let link = |from: &str, zh: &str, en: &str| {
        format!(
            "<a href=\"?from={from}&amp;to={last}{extra}\">{zh} <span class=\"en\">{en}</span></a>",
            from = esc(from),
            last = esc(last),
            extra = esc(extra)
        )
    };
    format!(
        "<p>{} · {} · {} · {} · <a href=\"?{}\">全部 <span class=\"en\">all days</span></a></p>",
        link(last, "日", "day"),
        link(&week, "近7日", "week"),
        link(&date((*y, *m, 1)), "本月", "month"),
        link(&date((*y, 1, 1)), "年初至今", "year to date"),
        esc(extra.trim_start_matches('&'))
    )
}

/// The page around `body`.
pub fn page(title_zh: &str, title_en: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{tz} {te}</title><style>{css}</style></head><body>\
<header><h1>{tz} <span class=\"en\">{te}</span></h1></header><main>{body}</main></body></html>\n",
        tz = esc(title_zh),
        te = esc(title_en),
        css = CSS,
    )
}

const CSS: &str = "body{font-family:'Noto Sans CJK SC','WenQuanYi Micro Hei',sans-serif;margin:1.5em;color:#222}\
.en{color:#666;font-size:.85em;font-weight:normal}table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:.3em .6em}td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.city{font-weight:bold;background:#f4f4f4}.below{color:#b00}.flag{color:#b00}";

/// A rate cell pair: mean of enterprises, pooled with its parts.
fn combined(c: &Combined) -> String {
    let below = |v: Option<f64>| {
        if v.is_some_and(|v| v < TARGET) {
            " below"
        } else {
            ""
        }
    };
    format!(
        "<td class=\"num{}\">{}</td><td class=\"num\" title=\"{}/{}\">{}</td>",
        below(c.mean_of_enterprises),
        pct(c.mean_of_enterprises),
        c.pooled.numerator,
        c.pooled.denominator,
        pct(c.pooled.value)
    )
}

/// The city overview: a row per district and the city, the trend of the
/// verified rate against the target, and how many problems wait for a
/// reviewer.
pub fn city(
    period: &str,
    districts: &[(String, AreaFigures)],
    city: &AreaFigures,
    trend_svg: &str,
    problems: usize,
) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<p>期间 <span class=\"en\">Period</span>: {} · 目标 <span class=\"en\">target</span> {:.0}% · \
<a href=\"quality\">数据质量问题 <span class=\"en\">data-quality problems</span>: {problems}</a></p>",
        esc(period),
        TARGET * 100.0
    );
    if let Some((_, last)) = period.split_once(" – ") {
        body.push_str(&period_links(last, ""));
    }
    body.push_str(
        "<table><thead><tr><th>区县 <span class=\"en\">District</span></th>\
<th>登记 <span class=\"en\">Registered</span></th><th>报送 <span class=\"en\">Reporting</span></th>\
<th>达标 <span class=\"en\">≥65%</span></th>\
<th>核验数控化率·企业平均 <span class=\"en\">Verified, mean</span></th><th>核验·合并 <span class=\"en\">Verified, pooled</span></th>\
<th>申报·企业平均 <span class=\"en\">Declared, mean</span></th><th>申报·合并 <span class=\"en\">Declared, pooled</span></th>\
<th>申报−核验 <span class=\"en\">Declared − verified</span></th>\
<th>联网率 <span class=\"en\">Networking</span></th><th>排除 <span class=\"en\">Excluded</span></th></tr></thead><tbody>",
    );
    let rows = districts
        .iter()
        .map(|(code, f)| (code.as_str(), district_name(code), f, ""))
        .chain([(CITY.0, CITY.1, city, " class=\"city\"")]);
    for (code, name, f, class) in rows {
        let gap = match (
            f.cnc_rate_declared.mean_of_enterprises,
            f.cnc_rate_verified.mean_of_enterprises,
        ) {
            (Some(d), Some(v)) => format!("{:+.1} pt", (d - v) * 100.0),
            _ => "–".into(),
        };
        // The city's own total has no page; 市本级 (the city's code as a
        // region) has one, like a district.
        let link = if !class.is_empty() {
            format!("{} {}", esc(name), esc(code))
        } else {
            format!(
                "<a href=\"district/{c}\">{} {c}</a>",
                esc(name),
                c = esc(code)
            )
        };
        let _ = write!(
            body,
            "<tr{class}><td>{link}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{}{}\
<td class=\"num\">{gap}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            f.registered,
            f.reporting,
            f.at_target,
            combined(&f.cnc_rate_verified),
            combined(&f.cnc_rate_declared),
            pct(f.networking_rate.mean_of_enterprises),
            f.excluded.values().sum::<usize>()
        );
    }
    body.push_str("</tbody></table>");
    body.push_str("<h2>核验数控化率趋势 <span class=\"en\">Verified CNC rate, trend</span></h2>");
    body.push_str(trend_svg);
    page(
        "重点企业关键工序数控化率",
        "Key-process CNC rate of key enterprises",
        &body,
    )
}

/// How the district page orders its enterprises (`?sort=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By USCC (the default).
    Uscc,
    /// By verified CNC rate, lowest first (who needs help).
    Verified,
    /// By declared minus verified, largest first (who overstates).
    Gap,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "uscc" => Some(Sort::Uscc),
            "verified" => Some(Sort::Verified),
            "gap" => Some(Sort::Gap),
            _ => None,
        }
    }

    /// As [`Sort::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Sort::Uscc => "uscc",
            Sort::Verified => "verified",
            Sort::Gap => "gap",
        }
    }
}

/// A district: its figures, then its enterprises with theirs and why any
/// was left out, in `sort` order.
pub fn district(
    code: &str,
    period: &str,
    f: &AreaFigures,
    notes: &std::collections::BTreeMap<String, crate::quality::EnterpriseNotes>,
    sort: Sort,
) -> String {
    let mut rows: Vec<&crate::aggregate::EnterprisePeriod> = f.enterprises.iter().collect();
    let gap =
        |e: &crate::aggregate::EnterprisePeriod| match (e.cnc_rate_declared, e.cnc_rate_verified) {
            (Some(d), Some(v)) => Some(d - v),
            _ => None,
        };
    let key = |v: Option<f64>| v.unwrap_or(f64::NAN);
    match sort {
        Sort::Uscc => rows.sort_by(|a, b| a.uscc.cmp(&b.uscc)),
        Sort::Verified => rows.sort_by(|a, b| {
            key(a.cnc_rate_verified)
                .total_cmp(&key(b.cnc_rate_verified))
                .then(a.uscc.cmp(&b.uscc))
        }),
        Sort::Gap => rows.sort_by(|a, b| {
            key(gap(b))
                .total_cmp(&key(gap(a)))
                .then(a.uscc.cmp(&b.uscc))
        }),
    }
    let mut body = String::new();
    let _ = write!(
        body,
        "<p><a href=\"../\">全市 <span class=\"en\">City</span></a> · 期间 <span class=\"en\">Period</span>: {} · \
登记 <span class=\"en\">registered</span> {} · 报送 <span class=\"en\">reporting</span> {} · 达标 <span class=\"en\">≥65%</span> {} · \
核验·企业平均 <span class=\"en\">verified, mean</span> {} · 核验·合并 <span class=\"en\">verified, pooled</span> {}</p>",
        esc(period),
        f.registered,
        f.reporting,
        f.at_target,
        pct(f.cnc_rate_verified.mean_of_enterprises),
        pct(f.cnc_rate_verified.pooled.value)
    );
    let (from, to) = period.split_once(" – ").unwrap_or((period, period));
    body.push_str(&period_links(to, &format!("&sort={}", sort.name())));
    let by = |s: &str| format!("?from={}&amp;to={}&amp;sort={s}", esc(from), esc(to));
    let _ = write!(
        body,
        "<table><thead><tr><th><a href=\"{}\">统一社会信用代码 <span class=\"en\">USCC</span></a></th>\
<th>天数 <span class=\"en\">Days</span></th>\
<th><a href=\"{}\">核验数控化率 <span class=\"en\">Verified</span></a></th>\
<th>申报数控化率 <span class=\"en\">Declared</span></th>\
<th><a href=\"{}\">申报−核验 <span class=\"en\">Declared − verified</span></a></th>\
<th>联网率 <span class=\"en\">Networking</span></th><th>数控时间占比 <span class=\"en\">NC time share</span></th>\
<th>企业 <span class=\"en\">Enterprise</span></th>\
<th>备注 <span class=\"en\">Note</span></th></tr></thead><tbody>",
        by("uscc"),
        by("verified"),
        by("gap")
    );
    for e in rows {
        let below = if e.cnc_rate_verified.is_some_and(|v| v < TARGET) {
            " below"
        } else {
            ""
        };
        let g = gap(e).map_or("–".into(), |g| format!("{:+.1} pt", g * 100.0));
        let n = notes.get(&e.uscc);
        // Why it is left out, then each flag with its count of windows.
        let mut note: Vec<String> = e.excluded.iter().map(|x| esc(x.describe())).collect();
        for (flag, windows) in n.map(|n| &n.flags).into_iter().flatten() {
            note.push(format!(
                "{} ×{windows}",
                esc(crate::quality::flag_name(flag))
            ));
        }
        let _ = write!(
            body,
            "<tr><td><a href=\"../enterprise/{u}\">{u}</a></td><td class=\"num\">{}</td><td class=\"num{below}\">{}</td>\
<td class=\"num\">{}</td><td class=\"num\">{g}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"flag\">{}</td></tr>",
            e.days,
            pct(e.cnc_rate_verified),
            pct(e.cnc_rate_declared),
            pct(e.networking_rate),
            pct(e.nc_time_share.value),
            esc(n.map_or("", |n| n.name.as_str())),
            note.join("<br>"),
            u = esc(&e.uscc),
        );
    }
    body.push_str("</tbody></table>");
    page(
        &format!("{} {code}", district_name(code)),
        "District",
        &body,
    )
}

/// The data-quality page: every problem a reviewer must look at, by
/// gateway (see [`crate::quality`]).
pub fn quality(problems: &[crate::quality::Problem]) -> String {
    let mut body = String::from(
        "<p><a href=\"./\">全市 <span class=\"en\">City</span></a> · 评分细则禁止数据造假；以下各项须人工复核。\
<span class=\"en\">The programme's rules forbid falsified figures; each item below needs a reviewer.</span></p>",
    );
    if problems.is_empty() {
        body.push_str("<p>无待复核项 <span class=\"en\">Nothing to review.</span></p>");
    } else {
        body.push_str(
            "<table><thead><tr><th>网关 <span class=\"en\">Gateway</span></th><th>问题 <span class=\"en\">Problem</span></th>\
<th>详情 <span class=\"en\">Detail</span></th></tr></thead><tbody>",
        );
        for p in problems {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"flag\">{}</td><td>{}</td></tr>",
                esc(p.gateway_id()),
                esc(p.kind()),
                esc(&p.detail())
            );
        }
        body.push_str("</tbody></table>");
    }
    page("数据质量", "Data quality", &body)
}

/// The enterprise page: its gateways (last contact, chain status, model
/// history), its figures day by day, and its machines' last day.
pub fn enterprise(
    view: &crate::enterprise::EnterpriseView,
    days: &[crate::aggregate::EnterpriseDay],
) -> String {
    let mut body = String::from(
        "<p><a href=\"../\">全市 <span class=\"en\">City</span></a></p>\
<h2>网关 <span class=\"en\">Gateways</span></h2><table><thead><tr><th>网关 <span class=\"en\">Gateway</span></th>\
<th>最近联系 <span class=\"en\">Last contact</span></th><th>实例 <span class=\"en\">Instance</span></th>\
<th>已核验至 <span class=\"en\">Verified to index</span></th><th>窗口 <span class=\"en\">Windows</span></th>\
<th>断裂 <span class=\"en\">Breaks</span></th><th>待核验 <span class=\"en\">Pending</span></th>\
<th>配置哈希 <span class=\"en\">config_hash history</span></th></tr></thead><tbody>",
    );
    for g in &view.gateways {
        let contact = g.last_contact_ts.map_or("–".into(), when);
        if g.chains.is_empty() {
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"num\">{contact}</td><td colspan=\"6\">–</td></tr>",
                esc(&g.gateway_id)
            );
        }
        for c in &g.chains {
            let hashes: Vec<String> = c
                .config_hashes
                .iter()
                .map(|(i, _, h)| format!("#{i}: {}…", esc(h.get(..12).unwrap_or(h))))
                .collect();
            let broken: Vec<String> = c.broken.iter().map(i64::to_string).collect();
            let _ = write!(
                body,
                "<tr><td>{}</td><td class=\"num\">{contact}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
<td class=\"flag\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&g.gateway_id),
                esc(&c.instance),
                c.verified_to,
                c.windows,
                broken.join(", "),
                c.pending,
                hashes.join("<br>")
            );
        }
    }
    body.push_str(
        "</tbody></table><h2>每日指标 <span class=\"en\">Figures by day</span></h2><table><thead><tr>\
<th>日期 <span class=\"en\">Date</span></th><th>网关 <span class=\"en\">Gateways</span></th>\
<th>核验数控化率 <span class=\"en\">Verified</span></th><th>申报数控化率 <span class=\"en\">Declared</span></th>\
<th>联网率 <span class=\"en\">Networking</span></th><th>数控时间占比 <span class=\"en\">NC time share</span></th></tr></thead><tbody>",
    );
    for d in days {
        let f = &d.figures;
        let ratio = |r: &zgsz_contract::Ratio| {
            format!(
                "<td class=\"num\" title=\"{}/{}\">{}</td>",
                r.numerator,
                r.denominator,
                pct(r.value)
            )
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td>{}{}{}{}</tr>",
            esc(&d.date),
            d.gateways.len(),
            ratio(&f.cnc_rate_verified),
            ratio(&f.cnc_rate_declared),
            ratio(&f.networking_rate),
            ratio(&f.nc_time_share)
        );
    }
    body.push_str("</tbody></table>");
    reports(&mut body, &view.reports);
    body.push_str(
        "<h2>设备状态（最近一天） <span class=\"en\">Equipment states, last day</span></h2>",
    );
    match view.timeline_span {
        Some((from, to)) => body.push_str(&chart::timeline(from, to, &view.timeline)),
        None => {
            body.push_str("<p>尚无状态数据 <span class=\"en\">No states received yet.</span></p>")
        }
    }
    page(
        format!("企业 {} {}", view.uscc, view.name).trim_end(),
        "Enterprise",
        &body,
    )
}

/// The evidence reports taken in, with the verdict and why.
fn reports(body: &mut String, reports: &[crate::store::ReportRecord]) {
    body.push_str("<h2>证据报告 <span class=\"en\">Evidence reports</span></h2>");
    if reports.is_empty() {
        body.push_str("<p>尚未上传 <span class=\"en\">None uploaded.</span></p>");
        return;
    }
    body.push_str(
        "<table><thead><tr><th>收到 <span class=\"en\">Received</span></th>\
<th>网关 <span class=\"en\">Gateway</span></th><th>期间 <span class=\"en\">Period</span></th>\
<th>结论 <span class=\"en\">Verdict</span></th><th>一致 <span class=\"en\">Matched</span></th>\
<th>未收到 <span class=\"en\">Not received</span></th><th>不符 <span class=\"en\">Mismatched</span></th>\
<th>原因 <span class=\"en\">Reasons</span></th></tr></thead><tbody>",
    );
    for r in reports {
        // As the intake answered: `[{"code", "text"}]`.
        let reasons: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&r.reasons)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v["text"].as_str().map(esc))
            .collect();
        let (zh, class) = if r.verdict == "accepted" {
            ("接受", "")
        } else {
            ("拒绝", " class=\"flag\"")
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{} – {}</td><td{class}>{zh} <span class=\"en\">{}</span></td>\
<td class=\"num\">{}/{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            when(r.received_ts),
            esc(&r.gateway_id),
            esc(&r.period_from),
            esc(&r.period_to),
            esc(&r.verdict),
            r.matched,
            r.entries,
            r.not_received,
            r.mismatched,
            reasons.join("<br>")
        );
    }
    body.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_links_end_on_the_last_day() {
        let l = period_links("2026-03-02", "&sort=gap");
        // Seven days back crosses February.
        assert!(
            l.contains("?from=2026-02-24&amp;to=2026-03-02&amp;sort=gap"),
            "{l}"
        );
        assert!(l.contains("?from=2026-03-01&amp;to=2026-03-02"));
        assert!(l.contains("?from=2026-01-01&amp;to=2026-03-02"));
        assert!(l.contains("?from=2026-03-02&amp;to=2026-03-02"));
        assert!(l.contains("href=\"?sort=gap\""));
        assert_eq!(period_links("not a date", ""), "");
        assert_eq!(civil(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
