//! Champion against challenger on the same labelled rows (`risksense evaluate`).
//!
//! Each row of the archive carries the champion's score and flag and, when a challenger
//! shadowed it, the challenger's. Both are judged on the rows both scored: ranking quality
//! (ROC-AUC, PR-AUC), each model's own flags (its alert rate, recall, precision), the
//! challenger at the champion's alert rate (the same number of alerts, its top-scoring
//! rows: what promoting it would give the team to review), and how much the two alert
//! sets overlap.

use serde::Serialize;

use crate::metrics::{average_precision, roc_auc};

/// One labelled row as the archive holds it.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub score: f64,
    pub flag: bool,
    pub challenger_score: Option<f64>,
    pub challenger_flag: bool,
    pub is_fraud: bool,
}

/// How one model did on the rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelFigures {
    pub roc_auc: f64,
    pub pr_auc: f64,
    /// Share of the rows its own threshold flags.
    pub alert_rate: f64,
    /// Of the frauds, the share its flags catch; of its flags, the share that are fraud.
    pub recall: f64,
    pub precision: f64,
}

/// The champion and challenger on one set of rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub rows: usize,
    pub frauds: usize,
    pub champion: ModelFigures,
    pub challenger: Option<ModelFigures>,
    /// The challenger flagging as many rows as the champion does (its highest scores).
    pub challenger_recall_at_champion_rate: Option<f64>,
    pub challenger_precision_at_champion_rate: Option<f64>,
    /// |both| / |either| of the champion's flags and the challenger's top rows at the
    /// champion's alert rate.
    pub alert_overlap: Option<f64>,
}

fn figures(scores: &[f32], flags: &[bool], labels: &[bool]) -> ModelFigures {
    let frauds = labels.iter().filter(|&&l| l).count();
    let flagged = flags.iter().filter(|&&f| f).count();
    let caught = flags.iter().zip(labels).filter(|&(&f, &l)| f && l).count();
    ModelFigures {
        roc_auc: roc_auc(scores, labels),
        pr_auc: average_precision(scores, labels),
        alert_rate: flagged as f64 / scores.len().max(1) as f64,
        recall: caught as f64 / frauds.max(1) as f64,
        precision: caught as f64 / flagged.max(1) as f64,
    }
}

/// The `k` highest-scoring rows (ties by row order, so the set is deterministic).
fn top(scores: &[f32], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut chosen = vec![false; scores.len()];
    for &row in order.iter().take(k) {
        chosen[row] = true;
    }
    chosen
}

/// Compares champion and challenger on `rows` (a challenger's figures only if every row
/// has its score: a row it did not score would bias the comparison).
pub fn compare(rows: &[Scored]) -> Comparison {
    let labels: Vec<bool> = rows.iter().map(|r| r.is_fraud).collect();
    let scores: Vec<f32> = rows.iter().map(|r| r.score as f32).collect();
    let flags: Vec<bool> = rows.iter().map(|r| r.flag).collect();
    let champion = figures(&scores, &flags, &labels);
    let shadow: Option<Vec<f32>> = rows
        .iter()
        .map(|r| r.challenger_score.map(|s| s as f32))
        .collect();
    let (mut challenger, mut recall, mut precision, mut overlap) = (None, None, None, None);
    if let Some(shadow) = shadow.filter(|s| !s.is_empty()) {
        let shadow_flags: Vec<bool> = rows.iter().map(|r| r.challenger_flag).collect();
        challenger = Some(figures(&shadow, &shadow_flags, &labels));
        let k = flags.iter().filter(|&&f| f).count();
        let chosen = top(&shadow, k);
        let frauds = labels.iter().filter(|&&l| l).count();
        let caught = chosen
            .iter()
            .zip(&labels)
            .filter(|&(&c, &l)| c && l)
            .count();
        recall = Some(caught as f64 / frauds.max(1) as f64);
        precision = Some(caught as f64 / k.max(1) as f64);
        let both = chosen.iter().zip(&flags).filter(|&(&c, &f)| c && f).count();
        let either = chosen.iter().zip(&flags).filter(|&(&c, &f)| c || f).count();
        overlap = Some(if either == 0 {
            1.0
        } else {
            both as f64 / either as f64
        });
    }
    Comparison {
        rows: rows.len(),
        frauds: labels.iter().filter(|&&l| l).count(),
        champion,
        challenger,
        challenger_recall_at_champion_rate: recall,
        challenger_precision_at_champion_rate: precision,
        alert_overlap: overlap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(score: f64, flag: bool, shadow: f64, shadow_flag: bool, fraud: bool) -> Scored {
        Scored {
            score,
            flag,
            challenger_score: Some(shadow),
            challenger_flag: shadow_flag,
            is_fraud: fraud,
        }
    }

    #[test]
    fn figures_at_the_champions_alert_rate_and_the_overlap() {
        // Six rows, two frauds (rows 0 and 3). The champion flags rows 0 and 1 (one fraud);
        // the challenger ranks the frauds first and flags three rows itself.
        let rows = [
            row(0.9, true, 0.8, true, true),
            row(0.8, true, 0.1, false, false),
            row(0.3, false, 0.3, true, false),
            row(0.2, false, 0.9, true, true),
            row(0.1, false, 0.2, false, false),
            row(0.05, false, 0.05, false, false),
        ];
        let c = compare(&rows);
        assert_eq!((c.rows, c.frauds), (6, 2));
        assert_eq!(c.champion.alert_rate, 2.0 / 6.0);
        assert_eq!((c.champion.recall, c.champion.precision), (0.5, 0.5));
        // Champion ranks: frauds at 1st and 4th → AP (1 + 2/4) / 2.
        assert!((c.champion.pr_auc - 0.75).abs() < 1e-12);
        let challenger = c.challenger.expect("challenger");
        assert_eq!(challenger.roc_auc, 1.0);
        assert_eq!(challenger.pr_auc, 1.0);
        assert_eq!(challenger.alert_rate, 0.5);
        assert_eq!((challenger.recall, challenger.precision), (1.0, 2.0 / 3.0));
        // At the champion's rate (2 alerts): the challenger's top two are both frauds.
        assert_eq!(c.challenger_recall_at_champion_rate, Some(1.0));
        assert_eq!(c.challenger_precision_at_champion_rate, Some(1.0));
        // Champion {0, 1}, challenger top {0, 3}: one of three.
        assert_eq!(c.alert_overlap, Some(1.0 / 3.0));
    }

    #[test]
    fn no_challenger_figures_unless_every_row_has_a_shadow_score() {
        let mut rows = vec![
            row(0.9, true, 0.8, true, true),
            row(0.1, false, 0.2, false, false),
        ];
        rows[1].challenger_score = None;
        let c = compare(&rows);
        assert!(c.challenger.is_none() && c.alert_overlap.is_none());
        assert_eq!(c.champion.roc_auc, 1.0);
    }
}
