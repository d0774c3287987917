//! The three SVG plots (plotters, SVG backend): memory per held waiter vs N,
//! fan-out latency to the last waiter vs N, throughput vs K.

use std::path::Path;

use plotters::prelude::*;

use crate::servers::Kind;

const W: u32 = 760;
const H: u32 = 440;

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Abide => RGBColor(200, 30, 30),
        Kind::AsyncCurrent => RGBColor(30, 90, 200),
        Kind::AsyncMulti => RGBColor(20, 160, 160),
        Kind::Nchan => RGBColor(90, 90, 90),
        Kind::FloorInline1 | Kind::FloorHold => RGBColor(230, 140, 20),
        Kind::FloorInlineN => RGBColor(150, 90, 200),
    }
}

/// One line per server: (kind, points, dashed).
pub type Series = Vec<(Kind, String, Vec<(f64, f64)>, bool)>;

pub struct Chart<'a> {
    pub path: &'a Path,
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub log_x: bool,
    pub log_y: bool,
}

pub fn line_chart(c: &Chart, series: &Series) -> Result<(), String> {
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    if points.is_empty() {
        return Err(format!("no data for {}", c.title));
    }
    let (mut x0, mut x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if c.log_x {
        x0 /= 1.5;
        x1 *= 1.5;
    } else {
        let pad = (x1 - x0).max(1.0) * 0.05;
        x0 -= pad;
        x1 += pad;
    }
    if c.log_y {
        y0 = (y0 / 2.0).max(1e-3);
        y1 *= 2.0;
    } else {
        y0 = 0.0;
        y1 = if y1 > 0.0 { y1 * 1.15 } else { 1.0 };
    }
    let root = SVGBackend::new(c.path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(c.x_desc)
                .y_desc(c.y_desc)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| e.to_string())?;
            for (kind, label, pts, dashed) in series {
                let pts: Vec<(f64, f64)> =
                    pts.iter().copied().filter(|p| p.1.is_finite()).collect();
                if pts.is_empty() {
                    continue;
                }
                let col = color(*kind);
                let style = ShapeStyle::from(&col).stroke_width(2);
                if *dashed {
                    chart
                        .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                        .map_err(|e| e.to_string())?
                        .label(label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], style));
                } else {
                    chart
                        .draw_series(LineSeries::new(pts.clone(), style).point_size(3))
                        .map_err(|e| e.to_string())?
                        .label(label.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(c.title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70);
    match (c.log_x, c.log_y) {
        (false, false) => draw!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| e.to_string())?
        ),
        (true, false) => draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(|e| e.to_string())?
        ),
        (false, true) => draw!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| e.to_string())?
        ),
        (true, true) => draw!(
            builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(|e| e.to_string())?
        ),
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
