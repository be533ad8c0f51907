//! A query's result rows, and the pure step from rows to metric families.

use std::collections::HashSet;

use sqlx::postgres::PgRow;
use sqlx::{Column, Row, TypeInfo, ValueRef};

use super::config::QueryDef;
use crate::snapshot::{Family, Sample, Value};

/// One cell of a result row, reduced to what metrics need.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Number(f64),
    Text(String),
}

/// A result row as column name and cell, in column order.
pub type ResultRow = Vec<(String, Cell)>;

/// Turns a query's rows into its metric families. Rows whose value is NULL
/// are skipped; a NULL label becomes the empty string.
pub fn families_from_rows(query: &QueryDef, rows: &[ResultRow]) -> Result<Vec<Family>, String> {
    let mut out = Vec::with_capacity(query.metrics.len());
    for metric in &query.metrics {
        let mut family = Family::new(metric.name.clone(), metric.help.clone(), metric.kind);
        let mut seen = HashSet::new();
        for row in rows {
            let cell = |column: &str| {
                row.iter()
                    .find(|(name, _)| name == column)
                    .map(|(_, c)| c)
                    .ok_or_else(|| {
                        let have: Vec<&str> = row.iter().map(|(n, _)| n.as_str()).collect();
                        format!(
                            "metric {}: the result has no column {column:?} (it has {have:?})",
                            metric.name
                        )
                    })
            };
            let value = match cell(&metric.value_column)? {
                Cell::Null => continue,
                Cell::Number(n) => *n,
                Cell::Text(t) => t.trim().parse::<f64>().map_err(|_| {
                    format!(
                        "metric {}: value column {:?} holds {t:?}, not a number",
                        metric.name, metric.value_column
                    )
                })?,
            };
            let mut labels = Vec::with_capacity(metric.label_columns.len());
            for column in &metric.label_columns {
                let text = match cell(column)? {
                    Cell::Null => String::new(),
                    Cell::Number(n) => n.to_string(),
                    Cell::Text(t) => t.clone(),
                };
                labels.push((column.clone().into(), text));
            }
            if !seen.insert(labels.clone()) {
                return Err(format!(
                    "metric {}: two rows have the same labels {labels:?}; group the query by every label column",
                    metric.name
                ));
            }
            family.samples.push(Sample {
                labels,
                value: Value::Number(value),
            });
        }
        out.push(family);
    }
    Ok(out)
}

/// Reads a row into cells; numbers of any SQL numeric type become `f64`.
pub fn read_row(row: &PgRow) -> Result<ResultRow, sqlx::Error> {
    let mut out = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let cell = if raw.is_null() {
            Cell::Null
        } else {
            let type_name = raw.type_info().name().to_owned();
            match type_name.as_str() {
                "INT2" => Cell::Number(row.try_get::<i16, _>(i)? as f64),
                "INT4" => Cell::Number(row.try_get::<i32, _>(i)? as f64),
                "INT8" => Cell::Number(row.try_get::<i64, _>(i)? as f64),
                "FLOAT4" => Cell::Number(row.try_get::<f32, _>(i)? as f64),
                "FLOAT8" => Cell::Number(row.try_get::<f64, _>(i)?),
                "NUMERIC" => {
                    let d: rust_decimal::Decimal = row.try_get(i)?;
                    Cell::Number(d.to_string().parse().unwrap_or(f64::NAN))
                }
                "BOOL" => Cell::Number(if row.try_get::<bool, _>(i)? { 1.0 } else { 0.0 }),
                "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" | "CHAR" => Cell::Text(row.try_get::<String, _>(i)?),
                other => {
                    return Err(sqlx::Error::Decode(format!(
                        "column {:?} has type {other}, which the exporter cannot read: cast it to float8 or text",
                        column.name()
                    ).into()))
                }
            }
        };
        out.push((column.name().to_owned(), cell));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::business::config::tests::ONE;
    use crate::business::config::QueryFile;
    use crate::snapshot::find;

    fn row(kind: Option<&str>, n: Cell) -> ResultRow {
        vec![
            (
                "kind".into(),
                kind.map_or(Cell::Null, |k| Cell::Text(k.into())),
            ),
            ("n".into(), n),
        ]
    }

    #[test]
    fn rows_become_samples() {
        let q = QueryFile::parse(ONE, "q").unwrap().queries.remove(0);
        let rows = vec![
            row(Some("x"), Cell::Number(2.0)),
            row(None, Cell::Number(1.0)),
            row(Some("skipped"), Cell::Null),
            row(Some("text"), Cell::Text("4.5".into())),
        ];
        let fams = families_from_rows(&q, &rows).unwrap();
        let f = find(&fams, "shop_things").unwrap();
        assert_eq!(f.samples.len(), 3);
        assert_eq!(f.value_of(&[("kind", "x")]), Some(2.0));
        assert_eq!(f.value_of(&[("kind", "")]), Some(1.0));
        assert_eq!(f.value_of(&[("kind", "text")]), Some(4.5));
    }

    #[test]
    fn bad_rows_are_errors() {
        let q = QueryFile::parse(ONE, "q").unwrap().queries.remove(0);
        let dup = families_from_rows(
            &q,
            &[
                row(Some("x"), Cell::Number(1.0)),
                row(Some("x"), Cell::Number(2.0)),
            ],
        );
        assert!(dup.unwrap_err().contains("same labels"));
        let missing = families_from_rows(&q, &[vec![("n".into(), Cell::Number(1.0))]]);
        assert!(missing.unwrap_err().contains("no column \"kind\""));
        let text = families_from_rows(&q, &[row(Some("x"), Cell::Text("many".into()))]);
        assert!(text.unwrap_err().contains("not a number"));
    }
}
