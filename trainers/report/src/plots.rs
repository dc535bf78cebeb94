//! The report's figures, drawn with `plotters` into PNG and SVG (the same drawing code
//! for both backends). Text uses the DejaVu Sans font compiled into the binary, so a
//! machine without fonts draws the same labels.
//!
//! Two kinds of chart cover every figure: [`LinePlot`] (loss curves; throughput and
//! VRAM against sequence length, one line per method) and [`BarPlot`] (an ablation:
//! one bar per knob value, error bars of one standard deviation over seeds).

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::ReportError;

/// Pixels of every figure.
const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; a failure would only lose text, never a panic.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The x axis of a line plot.
#[derive(Debug, Clone)]
pub enum XAxis {
    /// Numbers.
    Linear,
    /// Categories at x = 0, 1, ... (sequence lengths: equal spacing per doubling).
    Categories(Vec<String>),
}

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend entry.
    pub label: String,
    /// `(x, y)` points (x is the category's index for [`XAxis::Categories`]).
    pub points: Vec<(f64, f64)>,
}

/// A chart of lines.
#[derive(Debug, Clone)]
pub struct LinePlot {
    /// The caption.
    pub title: String,
    /// The x axis label, with its unit.
    pub x_desc: String,
    /// The y axis label, with its unit.
    pub y_desc: String,
    /// The x axis.
    pub x: XAxis,
    /// Log scale on y when the values span more than this ratio.
    pub log_y_over: f64,
    /// The lines.
    pub series: Vec<Series>,
    /// Shown instead of lines when there are none.
    pub empty_note: String,
}

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// The x label (the knob's value).
    pub label: String,
    /// The bar's height (the mean).
    pub mean: f64,
    /// Half the error bar (one standard deviation; 0 for one seed).
    pub std: f64,
    /// Seeds averaged (shown above the bar).
    pub n: usize,
}

/// A bar chart with error bars.
#[derive(Debug, Clone)]
pub struct BarPlot {
    /// The caption.
    pub title: String,
    /// The x axis label.
    pub x_desc: String,
    /// The y axis label, with its unit.
    pub y_desc: String,
    /// The bars, left to right.
    pub bars: Vec<Bar>,
}

/// One histogram of a [`HistPlot`] panel.
#[derive(Debug, Clone)]
pub struct HistSeries {
    /// Its legend entry.
    pub label: String,
    /// `(lo, hi, count)` bins, left to right.
    pub bins: Vec<(f64, f64, f64)>,
}

/// One panel of histograms (outlined steps, one colour per series, lightly filled).
#[derive(Debug, Clone)]
pub struct HistPanel {
    /// The caption.
    pub title: String,
    /// The x axis label, with its unit.
    pub x_desc: String,
    /// The y axis label, with its unit.
    pub y_desc: String,
    /// Log scale on y when the non-zero counts span more than this ratio.
    pub log_y_over: f64,
    /// The histograms.
    pub series: Vec<HistSeries>,
    /// Shown instead of bars when there are none.
    pub empty_note: String,
    /// Integer values on x (counts): ticks only at integers, and at least 8 wide.
    pub integer_x: bool,
}

/// Histogram panels side by side in one figure.
#[derive(Debug, Clone)]
pub struct HistPlot {
    /// The panels, left to right.
    pub panels: Vec<HistPanel>,
}

/// Something drawn onto any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;

    /// Pixels of the figure.
    fn size(&self) -> (u32, u32) {
        SIZE
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Numbers for axis labels: 3 significant digits, k/M for thousands and millions.
pub fn short(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = scaled.abs();
    let digits = if s == 0.0 || s >= 100.0 {
        0
    } else if s >= 10.0 {
        1
    } else if s >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{scaled:.digits$}");
    // 2.00 -> 2, 6.50 -> 6.5: axis ticks read as the numbers they are.
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// An axis description, marked when the axis is logarithmic.
fn axis_label(desc: &str, log: bool) -> String {
    if log {
        format!("{desc} (log scale)")
    } else {
        desc.to_string()
    }
}

fn category_label(categories: &[String], v: f64) -> String {
    let i = v.round();
    if (v - i).abs() > 1e-6 || i < 0.0 {
        return String::new();
    }
    categories.get(i as usize).cloned().unwrap_or_default()
}

impl Figure for LinePlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(err)?;
        let ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
            .collect();
        let xs: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        let (ymin, ymax) = ys
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
                (a.min(y), b.max(y))
            });
        let log = !ys.is_empty() && ymin > 0.0 && ymax / ymin > self.log_y_over;
        let t = |y: f64| if log { y.log10() } else { y };
        let (lo, hi) = if ys.is_empty() {
            (0.0, 1.0)
        } else {
            let (a, b) = (t(ymin), t(ymax));
            let pad = ((b - a) * 0.08).max(if log { 0.05 } else { b.abs() * 0.05 + 1e-9 });
            let lo = if !log && a >= 0.0 && a - pad < 0.0 {
                0.0
            } else {
                a - pad
            };
            (lo, b + pad)
        };
        let (x0, x1) = match &self.x {
            XAxis::Categories(c) => (-0.5, c.len().max(1) as f64 - 0.5),
            XAxis::Linear => {
                let (a, b) = xs
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                        (a.min(x), b.max(x))
                    });
                if xs.is_empty() || a == b {
                    (
                        a.min(0.0).min(if xs.is_empty() { 0.0 } else { a - 1.0 }),
                        b.max(1.0),
                    )
                } else {
                    (a, b)
                }
            }
        };
        let y_desc = axis_label(&self.y_desc, log);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, lo..hi)
            .map_err(err)?;
        let x_fmt = |v: &f64| match &self.x {
            XAxis::Categories(c) => category_label(c, *v),
            XAxis::Linear => short(*v),
        };
        let y_fmt = |v: &f64| {
            if log {
                short(10f64.powf(*v))
            } else {
                short(*v)
            }
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(&self.x_desc)
            .y_desc(&y_desc)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17));
        if let XAxis::Categories(c) = &self.x {
            mesh.x_labels(c.len().max(1)).disable_x_mesh();
        }
        mesh.draw().map_err(err)?;
        if self.series.is_empty() {
            let grey = BLACK.mix(0.6);
            let style = TextStyle::from((FONT, 20).into_font()).color(&grey);
            chart
                .draw_series(std::iter::once(Text::new(
                    self.empty_note.clone(),
                    (x0 + (x1 - x0) * 0.05, (lo + hi) / 2.0),
                    style,
                )))
                .map_err(err)?;
            return root.present().map_err(err);
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(x, y)| (x, t(y)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                });
            // Markers where lines are short (one or a few points).
            if points.len() <= 12 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 14))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)
    }
}

impl Figure for BarPlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(err)?;
        let top = self
            .bars
            .iter()
            .map(|b| b.mean + b.std)
            .fold(0.0f64, f64::max);
        let hi = if top > 0.0 { top * 1.15 } else { 1.0 };
        let n = self.bars.len().max(1);
        let labels: Vec<String> = self.bars.iter().map(|b| b.label.clone()).collect();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..hi)
            .map_err(err)?;
        let x_fmt = |v: &f64| category_label(&labels, *v);
        let y_fmt = |v: &f64| short(*v);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(err)?;
        let fill = Palette99::pick(0).mix(0.75).filled();
        chart
            .draw_series(self.bars.iter().enumerate().map(|(i, b)| {
                let x = i as f64;
                Rectangle::new([(x - 0.32, 0.0), (x + 0.32, b.mean)], fill)
            }))
            .map_err(err)?;
        let whisker = BLACK.stroke_width(2);
        for (i, b) in self.bars.iter().enumerate() {
            let x = i as f64;
            if b.std > 0.0 {
                let (lo, up) = (b.mean - b.std, b.mean + b.std);
                chart
                    .draw_series([
                        PathElement::new(vec![(x, lo), (x, up)], whisker),
                        PathElement::new(vec![(x - 0.08, lo), (x + 0.08, lo)], whisker),
                        PathElement::new(vec![(x - 0.08, up), (x + 0.08, up)], whisker),
                    ])
                    .map_err(err)?;
            }
            let text = format!("{} (n={})", short(b.mean), b.n);
            let style = TextStyle::from((FONT, 15).into_font()).color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ),
            );
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x, b.mean + b.std + hi * 0.01),
                    style,
                )))
                .map_err(err)?;
        }
        root.present().map_err(err)
    }
}

impl HistPanel {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let bins = self.series.iter().flat_map(|s| s.bins.iter());
        let (x0, x1, ymin, ymax) = bins.fold(
            (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, 0.0f64),
            |(a, b, lo, hi), &(l, h, c)| {
                let lo = if c > 0.0 { lo.min(c) } else { lo };
                (a.min(l), b.max(h), lo, hi.max(c))
            },
        );
        let empty = !ymax.is_finite() || ymax <= 0.0;
        let (x0, x1) = if empty || x0 >= x1 {
            (0.0, 1.0)
        } else if self.integer_x && x1 - x0 < 8.0 {
            // One or a few bins: a readable span of integers around them.
            let mid = ((x0 + x1) / 2.0).round();
            (
                (mid - 4.0).max(if x0 >= 0.0 { -0.5 } else { f64::MIN }),
                mid + 4.0,
            )
        } else {
            let pad = (x1 - x0) * 0.03;
            (x0 - pad, x1 + pad)
        };
        let log = !empty && ymax / ymin > self.log_y_over;
        let t = |y: f64| if log { y.max(0.5).log10() } else { y };
        let (lo, hi) = if empty {
            (0.0, 1.0)
        } else if log {
            // Headroom above the highest bin for the legend.
            (0.5f64.log10(), ymax.log10() + 0.6)
        } else {
            (0.0, ymax * 1.3)
        };
        let y_desc = axis_label(&self.y_desc, log);
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, (FONT, 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, lo..hi)
            .map_err(err)?;
        let y_fmt = |v: &f64| {
            if log {
                short(10f64.powf(*v))
            } else {
                short(*v)
            }
        };
        let x_fmt = |v: &f64| {
            if self.integer_x && (v - v.round()).abs() > 1e-6 {
                String::new()
            } else {
                short(*v)
            }
        };
        chart
            .configure_mesh()
            .x_desc(&self.x_desc)
            .y_desc(&y_desc)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .draw()
            .map_err(err)?;
        if empty {
            let grey = BLACK.mix(0.6);
            let style = TextStyle::from((FONT, 18).into_font()).color(&grey);
            chart
                .draw_series(std::iter::once(Text::new(
                    self.empty_note.clone(),
                    (x0 + (x1 - x0) * 0.05, (lo + hi) / 2.0),
                    style,
                )))
                .map_err(err)?;
            return Ok(());
        }
        for (i, s) in self.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let fill = color.mix(0.18).filled();
            chart
                .draw_series(
                    s.bins
                        .iter()
                        .filter(|b| b.2 > 0.0)
                        .map(|&(l, h, c)| Rectangle::new([(l, lo), (h, t(c))], fill)),
                )
                .map_err(err)?;
            // The outline: a step along the bin tops, down to the axis at both ends.
            let mut path = Vec::new();
            let mut last_hi = None;
            for &(l, h, c) in &s.bins {
                if last_hi != Some(l) {
                    if let Some(e) = last_hi {
                        path.push((e, lo));
                    }
                    path.push((l, lo));
                }
                let y = if c > 0.0 { t(c) } else { lo };
                path.push((l, y));
                path.push((h, y));
                last_hi = Some(h);
            }
            if let Some(e) = last_hi {
                path.push((e, lo));
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    path,
                    color.stroke_width(2),
                )))
                .map_err(err)?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 14))
            .draw()
            .map_err(err)
    }
}

impl Figure for HistPlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(err)?;
        let areas = root.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(&areas) {
            panel.draw(area)?;
        }
        root.present().map_err(err)
    }

    fn size(&self) -> (u32, u32) {
        (SIZE.0 * 3 / 4 * self.panels.len().max(1) as u32, SIZE.1)
    }
}

/// Draws `figure` into `dir/name.png` and `dir/name.svg` (each through a temp file and
/// a rename); returns both paths.
fn save(figure: &impl Figure, dir: &Path, name: &str) -> Result<Vec<PathBuf>, ReportError> {
    register_font();
    let mut out = Vec::new();
    for ext in ["png", "svg"] {
        let path = dir.join(format!("{name}.{ext}"));
        // The backends pick the format from the extension: the temp name keeps it.
        let tmp = dir.join(format!(".tmp.{}.{name}.{ext}", std::process::id()));
        let drawn = if ext == "png" {
            let root = BitMapBackend::new(&tmp, figure.size()).into_drawing_area();
            figure.draw(&root)
        } else {
            let root = SVGBackend::new(&tmp, figure.size()).into_drawing_area();
            figure.draw(&root)
        };
        drawn.map_err(|message| ReportError::Plot {
            path: path.clone(),
            message,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| ReportError::Io {
            path: path.clone(),
            source,
        })?;
        out.push(path);
    }
    Ok(out)
}

/// Draws a line plot as `name.png` and `name.svg` in `dir`.
pub fn save_lines(plot: &LinePlot, dir: &Path, name: &str) -> Result<Vec<PathBuf>, ReportError> {
    save(plot, dir, name)
}

/// Draws a bar plot as `name.png` and `name.svg` in `dir`.
pub fn save_bars(plot: &BarPlot, dir: &Path, name: &str) -> Result<Vec<PathBuf>, ReportError> {
    save(plot, dir, name)
}

/// Draws histogram panels as `name.png` and `name.svg` in `dir`.
pub fn save_hists(plot: &HistPlot, dir: &Path, name: &str) -> Result<Vec<PathBuf>, ReportError> {
    save(plot, dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers_keep_three_digits() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(5.4321), "5.43");
        assert_eq!(short(54.321), "54.3");
        assert_eq!(short(543.21), "543");
        assert_eq!(short(12_345.0), "12.3k");
        assert_eq!(short(2_500_000.0), "2.5M");
        assert_eq!(short(0.0123), "0.012");
        assert_eq!(short(2.0), "2");
        assert_eq!(short(20_000.0), "20k");
    }

    #[test]
    fn figures_are_written_as_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let lines = LinePlot {
            title: "t".into(),
            x_desc: "x".into(),
            y_desc: "y".into(),
            x: XAxis::Categories(vec!["128".into(), "256".into()]),
            log_y_over: 20.0,
            series: vec![Series {
                label: "a".into(),
                points: vec![(0.0, 10.0), (1.0, 1000.0)],
            }],
            empty_note: String::new(),
        };
        let files = save_lines(&lines, dir.path(), "lines").unwrap();
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("(log scale)"), "{svg}");
        let bars = BarPlot {
            title: "b".into(),
            x_desc: "k".into(),
            y_desc: "ppl".into(),
            bars: vec![
                Bar {
                    label: "32".into(),
                    mean: 10.0,
                    std: 1.0,
                    n: 2,
                },
                Bar {
                    label: "64".into(),
                    mean: 8.0,
                    std: 0.0,
                    n: 1,
                },
            ],
        };
        let files = save_bars(&bars, dir.path(), "bars").unwrap();
        assert!(std::fs::read_to_string(&files[1])
            .unwrap()
            .contains("(n=2)"));
        let hists = HistPlot {
            panels: vec![
                HistPanel {
                    title: "h".into(),
                    x_desc: "atoms per set".into(),
                    y_desc: "sets".into(),
                    log_y_over: 20.0,
                    series: vec![HistSeries {
                        label: "demo".into(),
                        bins: vec![(0.5, 1.5, 1.0), (1.5, 2.5, 1000.0), (3.5, 4.5, 10.0)],
                    }],
                    empty_note: String::new(),
                    integer_x: true,
                },
                HistPanel {
                    title: "empty".into(),
                    x_desc: "x".into(),
                    y_desc: "y".into(),
                    log_y_over: 20.0,
                    series: vec![],
                    empty_note: "nothing here".into(),
                    integer_x: false,
                },
            ],
        };
        let files = save_hists(&hists, dir.path(), "hists").unwrap();
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        for text in ["atoms per set", "sets (log scale)", "demo", "nothing here"] {
            assert!(svg.contains(text), "{text}: {svg}");
        }
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }
}
