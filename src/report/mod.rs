//! Report output for `sparsetune run`: PNG charts drawn by [`plot`] (line charts of
//! training curves, grouped bar charts of per-stage and per-layer numbers).

pub mod plot;

pub use plot::{bar_chart_png, line_chart_png, Series, CHART_HEIGHT, CHART_WIDTH};
