//! The district table as officials forward it: CSV and .xlsx, with
//! Chinese headers, one row per district and one for the city.
//!
//! Both files hold the same cells, built once by [`table`]; the rates are
//! fractions in the .xlsx (formatted as percentages, so a spreadsheet can
//! compute with them) and percentages with one decimal in the CSV.

use std::path::Path;

use crate::aggregate::{area, AreaFigures, AreaInput, Combined, Day, TARGET};

/// The Yangzhou county-level areas the programme scores, by GB/T 2260 code.
pub const DISTRICTS: [(&str, &str); 6] = [
    ("321002", "广陵区"),
    ("321003", "邗江区"),
    ("321012", "江都区"),
    ("321023", "宝应县"),
    ("321081", "仪征市"),
    ("321084", "高邮市"),
];

/// The city row's code and name.
pub const CITY: (&str, &str) = ("321000", "扬州市");

/// The row of enterprises registered under the city's own code rather
/// than a district's (市本级), when there are any.
pub const CITY_LEVEL: &str = "市本级";

/// The name of `code`, or the code itself when it is not a Yangzhou area.
pub fn district_name(code: &str) -> &str {
    if code == CITY.0 {
        return CITY_LEVEL;
    }
    DISTRICTS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(code, |(_, n)| n)
}

/// One cell of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Count(u64),
    /// A fraction (0.65 is 65 %); `None` when there is no value.
    Rate(Option<f64>),
}

/// The column headers.
pub const HEADERS: [&str; 17] = [
    "区县代码",
    "区县",
    "登记企业数",
    "报送企业数",
    "达标企业数（≥65%）",
    "关键工序数控化率（核验，企业平均）",
    "关键工序数控化率（核验，合并比率）",
    "核验分子",
    "核验分母",
    "关键工序数控化率（申报，企业平均）",
    "关键工序数控化率（申报，合并比率）",
    "申报与核验之差（企业平均）",
    "设备联网率（企业平均）",
    "设备联网率（合并比率）",
    "数控时间占比（合并比率）",
    "排除企业数",
    "排除原因",
];

/// The rows: every region code with an enrolled gateway, sorted, then the
/// city, over `from..=to`.
pub fn table<D: Day>(input: &AreaInput<D>, from: &str, to: &str) -> Vec<Vec<Cell>> {
    let mut rows: Vec<Vec<Cell>> = input
        .regions()
        .iter()
        .map(|r| row(r, district_name(r), &area(input, Some(r), from, to)))
        .collect();
    rows.push(row(CITY.0, CITY.1, &area(input, None, from, to)));
    rows
}

fn row(code: &str, name: &str, f: &AreaFigures) -> Vec<Cell> {
    let gap = match (
        f.cnc_rate_declared.mean_of_enterprises,
        f.cnc_rate_verified.mean_of_enterprises,
    ) {
        (Some(d), Some(v)) => Some(d - v),
        _ => None,
    };
    let excluded: Vec<String> = f
        .excluded
        .iter()
        .map(|(x, n)| format!("{n} {}", x.describe()))
        .collect();
    let count = |n: usize| Cell::Count(n as u64);
    let v: &Combined = &f.cnc_rate_verified;
    vec![
        Cell::Text(code.to_string()),
        Cell::Text(name.to_string()),
        count(f.registered),
        count(f.reporting),
        count(f.at_target),
        Cell::Rate(v.mean_of_enterprises),
        Cell::Rate(v.pooled.value),
        Cell::Count(v.pooled.numerator),
        Cell::Count(v.pooled.denominator),
        Cell::Rate(f.cnc_rate_declared.mean_of_enterprises),
        Cell::Rate(f.cnc_rate_declared.pooled.value),
        Cell::Rate(gap),
        Cell::Rate(f.networking_rate.mean_of_enterprises),
        Cell::Rate(f.networking_rate.pooled.value),
        Cell::Rate(f.nc_time_share.pooled.value),
        count(f.excluded.values().sum()),
        Cell::Text(excluded.join("；")),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Xlsx {
        path: String,
        source: rust_xlsxwriter::XlsxError,
    },
}

/// Writes the CSV: UTF-8 with a byte-order mark, so that Excel shows the
/// Chinese headers, and CRLF line ends (RFC 4180).
pub fn write_csv(rows: &[Vec<Cell>], path: &Path) -> Result<(), ExportError> {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("\u{feff}");
    out.push_str(&HEADERS.map(field).join(","));
    out.push_str("\r\n");
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .map(|c| match c {
                Cell::Text(t) => field(t),
                Cell::Count(n) => n.to_string(),
                Cell::Rate(Some(v)) => format!("{:.1}%", v * 100.0),
                Cell::Rate(None) => String::new(),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    std::fs::write(path, out).map_err(|source| ExportError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Writes the .xlsx: one sheet, `period` in the title row, the headers,
/// then the rows; rates are numbers formatted `0.0%`.
pub fn write_xlsx(rows: &[Vec<Cell>], period: &str, path: &Path) -> Result<(), ExportError> {
    use rust_xlsxwriter::{Format, Workbook};
    let err = |source| ExportError::Xlsx {
        path: path.display().to_string(),
        source,
    };
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet.set_name("关键工序数控化率").map_err(err)?;
    let bold = Format::new().set_bold();
    let pct = Format::new().set_num_format("0.0%");
    sheet
        .write_string_with_format(
            0,
            0,
            format!(
                "重点企业关键工序数控化率 {period}（目标 {:.0}%）",
                TARGET * 100.0
            ),
            &bold,
        )
        .map_err(err)?;
    for (c, h) in HEADERS.iter().enumerate() {
        sheet
            .write_string_with_format(1, c as u16, *h, &bold)
            .map_err(err)?;
    }
    for (i, r) in rows.iter().enumerate() {
        let row = i as u32 + 2;
        for (c, cell) in r.iter().enumerate() {
            let col = c as u16;
            match cell {
                Cell::Text(t) => sheet.write_string(row, col, t).map(|_| ()),
                Cell::Count(n) => sheet.write_number(row, col, *n as f64).map(|_| ()),
                Cell::Rate(Some(v)) => sheet
                    .write_number_with_format(row, col, *v, &pct)
                    .map(|_| ()),
                Cell::Rate(None) => Ok(()),
            }
            .map_err(err)?;
        }
    }
    sheet.set_column_width(1, 18).map_err(err)?;
    sheet.set_column_width(16, 48).map_err(err)?;
    book.save(path).map_err(err)
}
