//! PNG charts for the `sparsetune run` report: line charts (e.g. training loss per step,
//! several methods overlaid, optionally with a log-scale y axis) and grouped bar charts
//! (e.g. perplexity per pipeline stage, per-layer sparsity and rank).
//!
//! Every chart is [`CHART_WIDTH`] x [`CHART_HEIGHT`] pixels, white background, with a
//! title, axis labels, tick labels, and a legend when there is more than one series.
//! Drawing goes through plotters' bitmap backend into an in-memory RGB buffer, which is
//! encoded with the `png` crate; the caller writes the bytes (`sparsetune run` lists their
//! hash in its manifest before it does).
//!
//! Text is rasterised by ab_glyph from a font embedded in the binary, so charts render
//! the same on a bare machine without fontconfig or system fonts: DejaVu Sans 2.37
//! (`assets/fonts/DejaVuSans.ttf`, copied unchanged from the `dejavu` 2.37.0 crate on
//! crates.io), under the Bitstream Vera / DejaVu font license, whose text is in
//! `assets/fonts/DejaVuSans-LICENSE.txt`.

use std::fmt::Display;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::{Error, Result};

/// Width in pixels of every chart written by this module.
pub const CHART_WIDTH: u32 = 900;
/// Height in pixels of every chart written by this module.
pub const CHART_HEIGHT: u32 = 500;

/// DejaVu Sans 2.37, see the module docs for its origin and license.
static FONT_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family the embedded font is registered under. plotters' own defaults ask for
/// "sans-serif", so registering under that name covers every text element.
const FONT: &str = "sans-serif";
const TITLE_SIZE: u32 = 22;
const DESC_SIZE: u32 = 15;
const TICK_SIZE: u32 = 13;

/// Series colours (matplotlib's "tab10"); more than ten series reuse them in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One named series of (x, y) points.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// The points, drawn in the given order.
    pub points: &'a [(f64, f64)],
}

/// Line chart (e.g. training loss per step, several methods overlaid) as PNG bytes
/// (`path`, where they will be written, names the chart in errors).
///
/// Points with a non-finite x or y are skipped (and, with `log_y`, points with y <= 0);
/// the line joins the remaining points in order. Series of at most 40 plotted points also
/// get a marker at each point, so a single-point series is visible. A series left with no
/// points still appears in the legend.
///
/// Errors: [`Error::InvalidArgument`] if `series` is empty or no series has a plottable
/// point; [`Error::Io`] (with `path`) if drawing fails.
pub fn line_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<Vec<u8>> {
    let rgb = render_line(path, (CHART_WIDTH, CHART_HEIGHT), title, x_label, y_label, series, log_y)?;
    png_bytes(path, CHART_WIDTH, CHART_HEIGHT, &rgb)
}

/// Grouped bar chart (e.g. perplexity per pipeline stage; per-layer sparsity and rank) as
/// PNG bytes (`path` names the chart in errors): one group per entry of `categories`, one bar per series in
/// each group, `series[j].1[i]` being the value of series `j` in category `i`.
///
/// Linear bars start at 0 (values may be negative); with `log_y` they start at the bottom
/// of the axis. Non-finite values (and, with `log_y`, values <= 0) leave their bar out.
/// With many categories only every k-th category is labelled, so labels do not overlap.
///
/// Errors: [`Error::InvalidArgument`] if `categories` or `series` is empty, a series does
/// not have one value per category, or no value is plottable; [`Error::Io`] (with `path`)
/// if drawing fails.
pub fn bar_chart_png(
    path: &Path,
    title: &str,
    categories: &[String],
    y_label: &str,
    series: &[(&str, &[f64])],
    log_y: bool,
) -> Result<Vec<u8>> {
    let rgb = render_bar(path, (CHART_WIDTH, CHART_HEIGHT), title, categories, y_label, series, log_y)?;
    png_bytes(path, CHART_WIDTH, CHART_HEIGHT, &rgb)
}

/// Registers the embedded font with plotters once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_TTF).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("report: the embedded chart font (DejaVuSans.ttf) could not be parsed"))
    }
}

/// Maps a plotters drawing error to [`Error::Io`] on the chart's path.
fn draw_err<E: Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::io(path, std::io::Error::other(format!("drawing chart: {e}")))
}

/// Encodes an RGB8 buffer as PNG (`path` names the chart in errors).
fn png_bytes(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    encode_png(width, height, rgb).map_err(|e| Error::io(path, std::io::Error::other(format!("encoding PNG: {e}"))))
}

fn encode_png(width: u32, height: u32, rgb: &[u8]) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// How an [`Axis`] turns tick positions into label text.
enum Labels {
    /// Numbers, with a fixed number of decimals or (`None`) about four significant digits;
    /// `log` axes hold log10 of the value, and label the value itself.
    Numbers { decimals: Option<usize>, log: bool },
    /// Category `i` is centred at `i + 0.5`.
    Categories(Vec<String>),
}

/// One axis in plot space (log10 of the value on a log axis), with our own tick
/// positions and labels. (plotters' `WithKeyPoints` would do for the ticks, but over an
/// f64 range it loses the value formatter that the mesh needs.)
struct Axis {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
    labels: Labels,
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Ticks only as bold points: labels and grid lines, no light grid.
        if hint.weight().allow_light_points() {
            vec![]
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

impl ValueFormatter<f64> for Axis {
    fn format(value: &f64) -> String {
        format_number(*value, None)
    }

    fn format_ext(&self, value: &f64) -> String {
        match &self.labels {
            Labels::Numbers { decimals, log: false } => format_number(*value, *decimals),
            Labels::Numbers { decimals, log: true } => format_number(10f64.powf(*value), *decimals),
            Labels::Categories(names) => {
                let i = (value - 0.5).round();
                if i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            }
        }
    }
}

impl Axis {
    /// Axis covering `[lo, hi]` (plot space) plus `margin` of the span on each side given
    /// by `pad_lo` / `pad_hi`; a zero span is widened so that the data sits in the middle.
    fn new(what: &str, lo: f64, hi: f64, log: bool, pad_lo: f64, pad_hi: f64) -> Result<Axis> {
        let span = hi - lo;
        if !lo.is_finite() || !hi.is_finite() || !span.is_finite() {
            return Err(Error::invalid(format!("{what}: data range [{lo}, {hi}] is too large to plot")));
        }
        let scale = lo.abs().max(hi.abs());
        let (lo, hi) = if span <= 1e-9 * scale {
            let mid = 0.5 * (lo + hi);
            let half = if log {
                0.5
            } else if mid != 0.0 {
                0.1 * mid.abs()
            } else {
                1.0
            };
            (mid - half, mid + half)
        } else {
            (lo - pad_lo * span, hi + pad_hi * span)
        };
        let (ticks, decimals) = if log { log_ticks(lo, hi) } else { linear_ticks(lo, hi, 6) };
        Ok(Axis { linear: (lo..hi).into(), ticks, labels: Labels::Numbers { decimals, log } })
    }

    /// Category axis over `[0, names.len()]`, labelling the categories at `shown`.
    fn categories(names: Vec<String>, shown: impl Iterator<Item = usize>) -> Axis {
        let ticks = shown.map(|i| i as f64 + 0.5).collect();
        Axis { linear: (0.0..names.len() as f64).into(), ticks, labels: Labels::Categories(names) }
    }

    /// Lower end of the axis, in plot space.
    fn lo(&self) -> f64 {
        self.linear.range().start
    }

    /// Position of `v` (plot space) along the axis, 0 at the low end and 1 at the high end.
    fn frac(&self, v: f64) -> f64 {
        let r = self.linear.range();
        (v - r.start) / (r.end - r.start)
    }
}

/// "Nice" ticks (1, 2, 5 x 10^k steps) inside `[lo, hi]`, about `target` of them, and the
/// number of decimals that shows the step.
fn linear_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, Option<usize>) {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return (vec![], None);
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm < 1.5 {
            1.0
        } else if norm < 3.0 {
            2.0
        } else if norm < 7.0 {
            5.0
        } else {
            10.0
        };
    let first = (lo / step).ceil();
    let mut ticks = Vec::new();
    let mut k = first;
    while k * step <= hi && ticks.len() < 50 {
        ticks.push(if k == 0.0 { 0.0 } else { k * step });
        k += 1.0;
    }
    let decimals = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
    (ticks, Some(decimals))
}

/// Ticks for a log10 axis over `[lo, hi]` (exponents): powers of ten (thinned to at most
/// eight) when the axis spans several decades, 1-2-5 steps when it spans one or two, and
/// linear steps in value space when it spans less than a decade.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Option<usize>) {
    let (dlo, dhi) = (lo.ceil() as i64, hi.floor() as i64);
    if hi - lo >= 1.0 {
        let decades = dhi - dlo + 1;
        if decades >= 3 {
            let stride = ((decades + 7) / 8).max(1);
            let ticks = (dlo..=dhi).filter(|d| (d - dlo) % stride == 0).map(|d| d as f64).collect();
            return (ticks, None);
        }
        let mut ticks = Vec::new();
        for d in (lo.floor() as i64)..=dhi {
            for m in [1.0f64, 2.0, 5.0] {
                let t = d as f64 + m.log10();
                if t >= lo && t <= hi {
                    ticks.push(t);
                }
            }
        }
        return (ticks, None);
    }
    let (ticks, decimals) = linear_ticks(10f64.powf(lo), 10f64.powf(hi), 5);
    (ticks.into_iter().filter(|&v| v > 0.0).map(f64::log10).collect(), decimals)
}

/// Tick label text: fixed `decimals` when given, else about four significant digits with
/// trailing zeros dropped; scientific notation for very large or very small magnitudes.
fn format_number(v: f64, decimals: Option<usize>) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".to_string() } else { format!("{v}") };
    }
    let a = v.abs();
    if !(1e-4..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        return match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", trim_zeros(m)),
            None => s,
        };
    }
    match decimals {
        Some(d) => format!("{v:.d$}"),
        None => {
            let d = (3.0 - a.log10().floor()).clamp(0.0, 8.0) as usize;
            trim_zeros(&format!("{v:.d$}")).to_string()
        }
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Min and max of an iterator of finite values, `None` if it is empty.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Renders a line chart into an RGB8 buffer of `size`; see [`line_chart_png`].
fn render_line(
    path: &Path,
    size: (u32, u32),
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<Vec<u8>> {
    let what = format!("line_chart {title:?}");
    if series.is_empty() {
        return Err(Error::invalid(format!("{what}: no series given")));
    }
    // Plottable points per series, y already in plot space.
    let data: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                .collect()
        })
        .collect();
    let all = || data.iter().flatten();
    let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) = (min_max(all().map(|p| p.0)), min_max(all().map(|p| p.1))) else {
        let hint = if log_y { " (a log-scale y axis needs y > 0)" } else { "" };
        return Err(Error::invalid(format!("{what}: no finite points to plot{hint}")));
    };
    let x_axis = Axis::new(&what, x_lo, x_hi, false, 0.02, 0.02)?;
    let y_axis = Axis::new(&what, y_lo, y_hi, log_y, 0.06, 0.06)?;
    let legend = (series.len() > 1).then(|| {
        // The data as (a subsample of) points along each polyline, in plot-area fractions.
        let mut boxes = Vec::new();
        for pts in &data {
            let stride = (pts.len() / 2000).max(1);
            let sub: Vec<(f64, f64)> = pts.iter().step_by(stride).chain(pts.last()).copied().collect();
            for w in sub.windows(2) {
                for k in 0..4 {
                    let t = k as f64 / 4.0;
                    let x = x_axis.frac(w[0].0 + t * (w[1].0 - w[0].0));
                    let y = y_axis.frac(w[0].1 + t * (w[1].1 - w[0].1));
                    boxes.push([x, x, y, y]);
                }
            }
            if let Some(&(x, y)) = sub.last() {
                let (x, y) = (x_axis.frac(x), y_axis.frac(y));
                boxes.push([x, x, y, y]);
            }
        }
        let names: Vec<&str> = series.iter().map(|s| s.name).collect();
        legend_position(size, &names, &boxes)
    });
    render_chart(path, size, title, (x_axis, y_axis), Some(x_label), y_label, legend, |chart| {
        let err = draw_err(path);
        for (i, (s, points)) in series.iter().zip(&data).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let marker = if points.len() <= 40 { 3 } else { 0 };
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.filled().stroke_width(2)).point_size(marker))
                .map_err(&err)?
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
        }
        Ok(())
    })
}

/// Renders a grouped bar chart into an RGB8 buffer of `size`; see [`bar_chart_png`].
fn render_bar(
    path: &Path,
    size: (u32, u32),
    title: &str,
    categories: &[String],
    y_label: &str,
    series: &[(&str, &[f64])],
    log_y: bool,
) -> Result<Vec<u8>> {
    let what = format!("bar_chart {title:?}");
    if categories.is_empty() {
        return Err(Error::invalid(format!("{what}: no categories given")));
    }
    if series.is_empty() {
        return Err(Error::invalid(format!("{what}: no series given")));
    }
    for (name, values) in series {
        if values.len() != categories.len() {
            return Err(Error::invalid(format!(
                "{what}: series {name:?} has {} values for {} categories",
                values.len(),
                categories.len()
            )));
        }
    }
    let plottable = |v: f64| v.is_finite() && (!log_y || v > 0.0);
    let to_plot = |v: f64| if log_y { v.log10() } else { v };
    let values = series.iter().flat_map(|(_, vs)| vs.iter().copied()).filter(|&v| plottable(v)).map(to_plot);
    let Some((mut lo, mut hi)) = min_max(values) else {
        let hint = if log_y { " (a log-scale y axis needs values > 0)" } else { "" };
        return Err(Error::invalid(format!("{what}: no finite values to plot{hint}")));
    };
    let (pad_lo, pad_hi) = if log_y {
        (0.08, 0.06)
    } else {
        // Linear bars grow from 0: keep 0 on the axis, pad only the side(s) away from it.
        lo = lo.min(0.0);
        hi = hi.max(0.0);
        if lo == hi {
            hi = 1.0;
        }
        (if lo < 0.0 { 0.06 } else { 0.0 }, if hi > 0.0 { 0.06 } else { 0.0 })
    };
    let y_axis = Axis::new(&what, lo, hi, log_y, pad_lo, pad_hi)?;
    let base = if log_y { y_axis.lo() } else { 0.0 };

    // Category i occupies [i, i + 1] on the x axis; label every `stride`-th at its centre.
    let n = categories.len();
    const MAX_LABEL_CHARS: usize = 24;
    let labels: Vec<String> = categories
        .iter()
        .map(|c| {
            if c.chars().count() > MAX_LABEL_CHARS {
                let mut s: String = c.chars().take(MAX_LABEL_CHARS - 1).collect();
                s.push('\u{2026}');
                s
            } else {
                c.clone()
            }
        })
        .collect();
    let widest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1).max(1);
    let plot_width = size.0.saturating_sub(120).max(1) as f64;
    let label_px = widest as f64 * 0.6 * TICK_SIZE as f64 + 10.0;
    let stride = ((n as f64 * label_px / plot_width).ceil() as usize).max(1);
    let x_axis = Axis::categories(labels, (0..n).step_by(stride));

    // Bar j of category i spans bar_x(i, j) on the x axis: the series share 80% of the slot.
    let group = 0.8;
    let width = group / series.len() as f64;
    let bar_x = |i: usize, j: usize| {
        let x0 = i as f64 + (1.0 - group) / 2.0 + j as f64 * width;
        (x0, x0 + width * 0.9)
    };
    let legend = (series.len() > 1).then(|| {
        let mut boxes = Vec::new();
        for (j, (_, vals)) in series.iter().enumerate() {
            for (i, &v) in vals.iter().enumerate().filter(|(_, v)| plottable(**v)) {
                let (x0, x1) = bar_x(i, j);
                let (ya, yb) = (y_axis.frac(base), y_axis.frac(to_plot(v)));
                boxes.push([x_axis.frac(x0), x_axis.frac(x1), ya.min(yb), ya.max(yb)]);
            }
        }
        let names: Vec<&str> = series.iter().map(|s| s.0).collect();
        legend_position(size, &names, &boxes)
    });
    render_chart(path, size, title, (x_axis, y_axis), None, y_label, legend, |chart| {
        let err = draw_err(path);
        for (j, (name, vals)) in series.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let bars = vals.iter().enumerate().filter(|(_, v)| plottable(**v)).map(|(i, &v)| {
                let (x0, x1) = bar_x(i, j);
                let y = to_plot(v);
                Rectangle::new([(x0, base.max(y)), (x1, base.min(y))], color.filled())
            });
            chart
                .draw_series(bars)
                .map_err(&err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        }
        Ok(())
    })
}

/// The chart both renderers share, as RGB8 pixels of `size`: white background, margins,
/// the title, a labelled y axis with ticks, and either a labelled x axis (`x_desc`) or,
/// for categories, no x label and no vertical grid lines; `draw` adds the series, then the
/// legend goes at `legend`.
#[allow(clippy::too_many_arguments)]
fn render_chart(
    path: &Path,
    size: (u32, u32),
    title: &str,
    (x_axis, y_axis): (Axis, Axis),
    x_desc: Option<&str>,
    y_desc: &str,
    legend: Option<SeriesLabelPosition>,
    draw: impl FnOnce(&mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<Axis, Axis>>) -> Result<()>,
) -> Result<Vec<u8>> {
    ensure_font()?;
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let err = draw_err(path);
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(15).x_label_area_size(if x_desc.is_some() { 45 } else { 35 }).y_label_area_size(75);
        if !title.is_empty() {
            builder.caption(title, (FONT, TITLE_SIZE));
        }
        let mut chart = builder.build_cartesian_2d(x_axis, y_axis).map_err(&err)?;
        let mut mesh = chart.configure_mesh();
        match x_desc {
            Some(d) => mesh.x_desc(d),
            None => mesh.disable_x_mesh(),
        };
        mesh.y_desc(y_desc).label_style((FONT, TICK_SIZE)).axis_desc_style((FONT, DESC_SIZE)).draw().map_err(&err)?;
        draw(&mut chart)?;
        if let Some(pos) = legend {
            draw_legend(&mut chart, pos).map_err(&err)?;
        }
        root.present().map_err(&err)?;
    }
    Ok(buf)
}

/// A rectangle in plot-area fractions: `[x0, x1] x [y0, y1]`, y = 0 at the bottom.
type FracBox = [f64; 4];

fn overlaps(a: &FracBox, b: &FracBox) -> bool {
    a[0] <= b[1] && b[0] <= a[1] && a[2] <= b[3] && b[2] <= a[3]
}

/// Picks the corner of the plot area for the legend (upper right, upper left, lower right,
/// lower left, in that order of preference) whose legend-sized box overlaps the fewest of
/// the `data` boxes, so the legend hides as little of the data as possible.
fn legend_position(size: (u32, u32), names: &[&str], data: &[FracBox]) -> SeriesLabelPosition {
    // Approximate plot area and legend box in pixels (see the layouts in render_*).
    let plot_w = size.0.saturating_sub(105).max(1) as f64;
    let plot_h = size.1.saturating_sub(105).max(1) as f64;
    let widest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as f64;
    let fw = ((widest * 0.6 * TICK_SIZE as f64 + 60.0) / plot_w).min(1.0);
    let fh = ((names.len() as f64 * 20.0 + 20.0) / plot_h).min(1.0);
    let corners = [
        (SeriesLabelPosition::UpperRight, [1.0 - fw, 1.0, 1.0 - fh, 1.0]),
        (SeriesLabelPosition::UpperLeft, [0.0, fw, 1.0 - fh, 1.0]),
        (SeriesLabelPosition::LowerRight, [1.0 - fw, 1.0, 0.0, fh]),
        (SeriesLabelPosition::LowerLeft, [0.0, fw, 0.0, fh]),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (pos, corner) in corners {
        let hits = data.iter().filter(|b| overlaps(b, &corner)).count();
        if hits < best.0 {
            best = (hits, pos);
        }
    }
    best.1
}

/// Draws the series legend at `pos` in the plot area.
fn draw_legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Axis, Axis>>,
    pos: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<<BitMapBackend<'b> as DrawingBackend>::ErrorType>> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.5))
        .label_font((FONT, TICK_SIZE))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SIZE: (u32, u32) = (CHART_WIDTH, CHART_HEIGHT);

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("sparsetune-plot-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes a chart's bytes to `path`.
    fn save(path: &Path, png: Result<Vec<u8>>) {
        std::fs::write(path, png.unwrap()).unwrap();
    }

    /// Checks the PNG signature and the IHDR width/height, returns the file size.
    fn check_png(path: &Path) -> usize {
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.len() > 33, "{}: too short", path.display());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((w, h), SIZE);
        bytes.len()
    }

    fn blank_png_len() -> usize {
        let white = vec![255u8; SIZE.0 as usize * SIZE.1 as usize * 3];
        encode_png(SIZE.0, SIZE.1, &white).unwrap().len()
    }

    /// Pixels in rows `rows` and columns `cols` whose channels are all below `max`.
    fn count_dark(buf: &[u8], rows: std::ops::Range<u32>, cols: std::ops::Range<u32>, max: u8) -> usize {
        let mut n = 0;
        for y in rows {
            for x in cols.clone() {
                let i = (y * SIZE.0 + x) as usize * 3;
                if buf[i..i + 3].iter().all(|&c| c < max) {
                    n += 1;
                }
            }
        }
        n
    }

    fn non_white(buf: &[u8]) -> usize {
        buf.chunks(3).filter(|p| p.iter().any(|&c| c != 255)).count()
    }

    type Points = Vec<(f64, f64)>;

    fn loss_curves() -> (Points, Points) {
        let a = (0..200).map(|i| (i as f64, 4.0 * (-(i as f64) / 60.0).exp() + 2.0)).collect();
        let mut b: Points = (0..200).map(|i| (i as f64, 5.0 * (-(i as f64) / 40.0).exp() + 2.2)).collect();
        b[17].1 = f64::NAN;
        b[90].1 = f64::INFINITY;
        (a, b)
    }

    #[test]
    fn line_chart_writes_png_with_text() {
        let dir = TempDir::new("line");
        let (a, b) = loss_curves();
        let series = [Series { name: "LoRA", points: &a }, Series { name: "sparse FT", points: &b }];
        for log_y in [false, true] {
            let path = dir.0.join(format!("loss-{log_y}.png"));
            save(&path, line_chart_png(&path, "Training loss", "step", "loss", &series, log_y));
            let len = check_png(&path);
            assert!(len > 2 * blank_png_len(), "chart PNG ({len} bytes) looks blank");
        }

        let p = Path::new("mem.png");
        let with = render_line(p, SIZE, "Training loss per step", "step", "loss", &series, false).unwrap();
        let without = render_line(p, SIZE, "", "step", "loss", &series, false).unwrap();
        assert!(non_white(&with) > 5000);
        // The title is dark text centred at the top; without it that band has no dark pixels.
        let title_dark = count_dark(&with, 0..35, 250..650, 100);
        assert!(title_dark > 100, "title rendered {title_dark} dark pixels");
        assert_eq!(count_dark(&without, 0..35, 250..650, 100), 0);
        // Tick labels and the x description below the plot area.
        assert!(count_dark(&with, SIZE.1 - 45..SIZE.1, 100..SIZE.0, 100) > 100);
        // Series colours are present.
        let blue = with.chunks(3).filter(|p| p == &[31, 119, 180]).count();
        let orange = with.chunks(3).filter(|p| p == &[255, 127, 14]).count();
        assert!(blue > 100 && orange > 100, "blue {blue}, orange {orange}");
    }

    #[test]
    fn bar_chart_writes_png_with_text() {
        let dir = TempDir::new("bar");
        let cats: Vec<String> = ["dense", "pruned", "fine-tuned"].iter().map(|s| s.to_string()).collect();
        let ppl = [12.5, 48.0, 15.25];
        let ppl2 = [12.5, 30.0, f64::NAN];
        let series: [(&str, &[f64]); 2] = [("wanda", &ppl), ("magnitude", &ppl2)];
        for log_y in [false, true] {
            let path = dir.0.join(format!("ppl-{log_y}.png"));
            save(&path, bar_chart_png(&path, "Perplexity per stage", &cats, "perplexity", &series, log_y));
            let len = check_png(&path);
            assert!(len > 2 * blank_png_len(), "chart PNG ({len} bytes) looks blank");
        }

        let p = Path::new("mem.png");
        let buf = render_bar(p, SIZE, "Perplexity per stage", &cats, "perplexity", &series, false).unwrap();
        assert!(count_dark(&buf, 0..35, 250..650, 100) > 100);
        let blue = buf.chunks(3).filter(|p| p == &[31, 119, 180]).count();
        assert!(blue > 1000, "bars: {blue} blue pixels");

        // Many categories (per-layer numbers), one series, negative values.
        let layers: Vec<String> = (0..64).map(|i| format!("model.layers.{i}.mlp")).collect();
        let vals: Vec<f64> = (0..64).map(|i| (i as f64 - 20.0) / 10.0).collect();
        let path = dir.0.join("layers.png");
        save(&path, bar_chart_png(&path, "Per-layer", &layers, "value", &[("x", &vals)], false));
        check_png(&path);
    }

    #[test]
    fn degenerate_inputs_plot_without_panicking() {
        let dir = TempDir::new("degenerate");
        let path = dir.0.join("d.png");
        let one = [(3.0, 7.0)];
        let flat = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0)];
        let zeros = [(0.0, 0.0), (0.0, 0.0)];
        let nan = [(0.0, f64::NAN)];
        let empty: [(f64, f64); 0] = [];
        let tiny = [(0.0, 1e-12), (1.0, 2e-12)];
        let huge = [(0.0, 1e300), (1e12, 5e300)];
        for log_y in [false, true] {
            for pts in [&one[..], &flat, &tiny, &huge] {
                save(&path, line_chart_png(&path, "t", "x", "y", &[Series { name: "s", points: pts }], log_y));
                check_png(&path);
            }
            // An all-NaN or empty series next to a good one is kept in the legend.
            let s = [
                Series { name: "ok", points: &flat },
                Series { name: "nan", points: &nan },
                Series { name: "none", points: &empty },
            ];
            save(&path, line_chart_png(&path, "t", "x", "y", &s, log_y));
        }
        save(&path, line_chart_png(&path, "t", "x", "y", &[Series { name: "z", points: &zeros }], false));

        let cats = vec!["a".to_string()];
        for vals in [[0.0], [-3.0], [1e-30], [5.0]] {
            save(&path, bar_chart_png(&path, "t", &cats, "y", &[("s", &vals)], false));
            check_png(&path);
        }
        save(&path, bar_chart_png(&path, "t", &cats, "y", &[("s", &[5.0])], true));
        save(&path, bar_chart_png(&path, "", &cats, "", &[("s", &[0.5]), ("", &[f64::NAN])], true));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dir = TempDir::new("errors");
        let path = dir.0.join("e.png");
        let nan = [(0.0, f64::NAN), (f64::INFINITY, 1.0)];
        let neg = [(0.0, -1.0), (1.0, 0.0)];
        let is_invalid = |r: Result<Vec<u8>>| matches!(r, Err(Error::InvalidArgument(_)));

        assert!(is_invalid(line_chart_png(&path, "t", "x", "y", &[], false)));
        assert!(is_invalid(line_chart_png(&path, "t", "x", "y", &[Series { name: "s", points: &[] }], false)));
        assert!(is_invalid(line_chart_png(&path, "t", "x", "y", &[Series { name: "s", points: &nan }], false)));
        assert!(is_invalid(line_chart_png(&path, "t", "x", "y", &[Series { name: "s", points: &neg }], true)));
        let huge = [(0.0, -1e308), (1.0, 1e308)];
        assert!(is_invalid(line_chart_png(&path, "t", "x", "y", &[Series { name: "s", points: &huge }], false)));

        let cats: Vec<String> = vec!["a".into(), "b".into()];
        assert!(is_invalid(bar_chart_png(&path, "t", &[], "y", &[("s", &[])], false)));
        assert!(is_invalid(bar_chart_png(&path, "t", &cats, "y", &[], false)));
        assert!(is_invalid(bar_chart_png(&path, "t", &cats, "y", &[("s", &[1.0])], false)));
        assert!(is_invalid(bar_chart_png(
            &path,
            "t",
            &cats,
            "y",
            &[("s", &[1.0, 2.0]), ("u", &[1.0, 2.0, 3.0])],
            false
        )));
        assert!(is_invalid(bar_chart_png(&path, "t", &cats, "y", &[("s", &[f64::NAN, f64::NAN])], false)));
        assert!(is_invalid(bar_chart_png(&path, "t", &cats, "y", &[("s", &[0.0, -2.0])], true)));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_number(0.0, None), "0");
        assert_eq!(format_number(2.5, None), "2.5");
        assert_eq!(format_number(100.0, None), "100");
        assert_eq!(format_number(0.125, None), "0.125");
        assert_eq!(format_number(1e7, None), "1e7");
        assert_eq!(format_number(2.5e-5, None), "2.5e-5");
        assert_eq!(format_number(100.02, Some(2)), "100.02");
        let (t, d) = linear_ticks(0.0, 1.0, 6);
        assert_eq!(d, Some(1));
        assert_eq!(t.len(), 6);
        // Within one decade the log axis still gets several ticks.
        let (t, _) = log_ticks(2.5f64.log10(), 4.0f64.log10());
        assert!(t.len() >= 3, "{t:?}");
        let (t, _) = log_ticks(-1.0, 9.0);
        assert!((2..=8).contains(&t.len()), "{t:?}");
    }
}
