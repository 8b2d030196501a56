//! The dashboard's charts, drawn on the server as SVG: a few rectangles each, sized in a `viewBox` so that
//! they scale to any width, coloured by class (the stylesheet themes them for light and dark), every bar
//! titled with its figures for a mouse-over and described for a screen reader. (A charting crate such as
//! plotters would bring fonts and a rasteriser for what is, here, rectangles.)

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{Markup, html};
use task_executor_shared::TaskStatus;

use crate::store::{batches::ProblemFigures, stats::MinuteCount};

const W: f64 = 600.0;

fn fmt(x: f64) -> String {
    format!("{x:.1}")
}

/// Tasks finished per minute over the last hour: completed (stacked under) failed or timed out, one bar a
/// minute, the newest on the right.
pub fn throughput(per_minute: &[MinuteCount], now: DateTime<Utc>) -> Markup {
    let last = now.timestamp().div_euclid(60);
    let first = last - 59;
    let mut ok = [0i64; 60];
    let mut bad = [0i64; 60];
    let mut other = [0i64; 60];
    for m in per_minute {
        if m.minute < first || m.minute > last {
            continue;
        }
        let i = (m.minute - first) as usize;
        match m.status {
            TaskStatus::Completed => ok[i] += m.n,
            TaskStatus::Failed | TaskStatus::Timeout => bad[i] += m.n,
            _ => other[i] += m.n,
        }
    }
    let total_ok: i64 = ok.iter().sum();
    let total_bad: i64 = bad.iter().sum();
    let total_other: i64 = other.iter().sum();
    let peak = (0..60).map(|i| ok[i] + bad[i]).max().unwrap_or(0).max(1);
    let h = 122.0;
    let plot_h = 120.0;
    let bar_w = W / 60.0;
    let summary = format!(
        "{total_ok} completed, {total_bad} failed or timed out, {total_other} cancelled in the last hour; at most {peak} in a minute"
    );
    html! {
        svg class="chart throughput" viewBox={ "0 0 " (W) " " (h) } role="img" aria-label=(summary) preserveAspectRatio="none" {
            desc { (summary) }
            line class="axis" x1="0" y1=(plot_h) x2=(W) y2=(plot_h) {}
            @for i in 0..60usize {
                @let x = i as f64 * bar_w;
                @let ok_h = ok[i] as f64 / peak as f64 * (plot_h - 4.0);
                @let bad_h = bad[i] as f64 / peak as f64 * (plot_h - 4.0);
                @let minute = DateTime::<Utc>::from_timestamp((first + i as i64) * 60, 0).unwrap_or(now);
                g {
                    title { (minute.format("%H:%M")) " UTC: " (ok[i]) " completed, " (bad[i]) " failed" }
                    rect class="bg" x=(fmt(x)) y="0" width=(fmt(bar_w)) height=(plot_h) {}
                    @if ok[i] > 0 { rect class="ok" x=(fmt(x + 0.5)) y=(fmt(plot_h - ok_h)) width=(fmt(bar_w - 1.0)) height=(fmt(ok_h)) {} }
                    @if bad[i] > 0 { rect class="bad" x=(fmt(x + 0.5)) y=(fmt(plot_h - ok_h - bad_h)) width=(fmt(bar_w - 1.0)) height=(fmt(bad_h)) {} }
                }
            }
        }
        // Below the chart, not in it: the chart stretches to the page's width, text would stretch with it.
        div class="ticks" { span { "60 min ago" } span { "peak " (peak) "/min" } span { "now" } }
        p class="legend" {
            span class="swatch ok" {} " completed " strong id="done-last-hour" { (total_ok) }
            " · " span class="swatch bad" {} " failed or timed out " strong { (total_bad) }
            @if total_other > 0 { " · cancelled " (total_other) }
        }
    }
}

/// Horizontal bars: each problem's success rate among its finished runs.
pub fn success_per_problem(per_problem: &BTreeMap<String, ProblemFigures>) -> Markup {
    if per_problem.values().all(|f| f.finished == 0) {
        return html! { p class="empty" { "No run of this batch has finished yet." } };
    }
    let row_h = 22.0;
    let label_w = 230.0;
    let bar_w = W - label_w - 60.0;
    let rows: Vec<_> = per_problem.iter().collect();
    let h = rows.len() as f64 * row_h + 4.0;
    html! {
        svg class="chart bars" viewBox={ "0 0 " (W) " " (fmt(h)) } role="img" aria-label="Success rate per problem" {
            @for (i, (problem, f)) in rows.iter().enumerate() {
                @let y = i as f64 * row_h + 2.0;
                @let rate = if f.finished > 0 { f.succeeded as f64 / f.finished as f64 } else { 0.0 };
                g class="bar" data-problem=(problem) {
                    title { (problem) ": " (f.succeeded) " of " (f.finished) " finished runs succeeded" }
                    text class="label" x=(label_w - 6.0) y=(fmt(y + row_h * 0.68)) text-anchor="end" {
                        @if problem.chars().count() > 34 { (problem.chars().take(33).collect::<String>()) "…" } @else { (problem) }
                    }
                    rect class="bg" x=(label_w) y=(fmt(y + 3.0)) width=(fmt(bar_w)) height=(fmt(row_h - 6.0)) {}
                    @if f.finished > 0 {
                        rect class="ok" x=(label_w) y=(fmt(y + 3.0)) width=(fmt(bar_w * rate)) height=(fmt(row_h - 6.0)) {}
                        text class="value" x=(fmt(label_w + bar_w + 6.0)) y=(fmt(y + row_h * 0.68)) { (format!("{:.0} %", rate * 100.0)) }
                    } @else {
                        text class="value" x=(fmt(label_w + bar_w + 6.0)) y=(fmt(y + row_h * 0.68)) { "—" }
                    }
                }
            }
        }
    }
}

/// Bins of a histogram of `values`: about √n of them (5 to 20), of equal width from the least to the most.
pub fn bins(values: &[f64]) -> Vec<(f64, f64, usize)> {
    let (Some(lo), Some(hi)) = (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) else {
        return Vec::new();
    };
    let n = ((values.len() as f64).sqrt().ceil() as usize).clamp(5, 20);
    let width = if hi > lo { (hi - lo) / n as f64 } else { 1.0 };
    let mut counts = vec![0usize; n];
    for v in values {
        let i = (((v - lo) / width) as usize).min(n - 1);
        counts[i] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| (lo + i as f64 * width, lo + (i + 1) as f64 * width, c))
        .collect()
}

/// A histogram of run durations (seconds).
pub fn histogram(durations: &[f64]) -> Markup {
    let bins = bins(durations);
    if bins.is_empty() {
        return html! { p class="empty" { "No run of this batch has finished yet." } };
    }
    let h = 160.0;
    let plot_h = 130.0;
    let peak = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1);
    let bar_w = W / bins.len() as f64;
    let label = |s: f64| {
        if s < 10.0 {
            format!("{s:.2}s")
        } else {
            format!("{s:.0}s")
        }
    };
    html! {
        svg class="chart histogram" viewBox={ "0 0 " (W) " " (h) } role="img" aria-label={ "Durations of " (durations.len()) " finished runs" } {
            line class="axis" x1="0" y1=(plot_h) x2=(W) y2=(plot_h) {}
            @for (i, (from, to, n)) in bins.iter().enumerate() {
                @let bh = *n as f64 / peak as f64 * (plot_h - 16.0);
                g class="bin" {
                    title { (label(*from)) "–" (label(*to)) ": " (n) " runs" }
                    rect class="bar" x=(fmt(i as f64 * bar_w + 1.0)) y=(fmt(plot_h - bh)) width=(fmt(bar_w - 2.0)) height=(fmt(bh)) {}
                    @if *n > 0 { text class="value" x=(fmt(i as f64 * bar_w + bar_w / 2.0)) y=(fmt(plot_h - bh - 3.0)) text-anchor="middle" { (n) } }
                }
            }
            text class="tick" x="0" y=(h - 12.0) { (label(bins[0].0)) }
            text class="tick" x=(W) y=(h - 12.0) text-anchor="end" { (label(bins[bins.len() - 1].1)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_hold_every_value() {
        let values: Vec<f64> = (0..100).map(f64::from).collect();
        let b = bins(&values);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(|x| x.2).sum::<usize>(), 100);
        assert_eq!(b[0].0, 0.0);
        assert_eq!(b[9].1, 99.0);
        let same = bins(&[3.0, 3.0]);
        assert_eq!(same.iter().map(|x| x.2).sum::<usize>(), 2);
        assert!(bins(&[]).is_empty());
    }
}
