//! Ranking metrics for anomaly scores against fraud labels.

/// Area under the ROC curve (ties count half), by the rank-sum formula.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return f64::NAN;
    }
    // Average ranks over ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &index in &order[i..=j] {
            if labels[index] {
                rank_sum += average_rank;
            }
        }
        i = j + 1;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Area under the precision-recall curve as average precision (the mean of the precision
/// at each fraud, scores descending).
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return f64::NAN;
    }
    let (mut hits, mut sum) = (0usize, 0.0);
    for (seen, &index) in order.iter().enumerate() {
        if labels[index] {
            hits += 1;
            sum += hits as f64 / (seen + 1) as f64;
        }
    }
    sum / positives as f64
}

/// The score at which `alert_rate` of the rows score at or above it (the model's f32
/// scores, or a rule's f64 alert scores: compared as f64, which keeps both exact).
pub fn threshold_for_alert_rate<S: Copy + Into<f64>>(scores: &[S], alert_rate: f64) -> f64 {
    if scores.is_empty() {
        return f64::INFINITY;
    }
    let mut sorted: Vec<f64> = scores.iter().map(|&s| s.into()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = ((scores.len() as f64 * alert_rate).ceil() as usize).clamp(1, scores.len());
    sorted[k - 1]
}

/// (recall, precision) of flagging rows with a score at or above `threshold`.
pub fn recall_precision_at<S: Copy + Into<f64>>(
    scores: &[S],
    labels: &[bool],
    threshold: f64,
) -> (f64, f64) {
    let (mut flagged, mut caught) = (0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        if s.into() >= threshold {
            flagged += 1;
            caught += usize::from(l);
        }
    }
    let positives = labels.iter().filter(|&&l| l).count();
    (
        caught as f64 / positives.max(1) as f64,
        caught as f64 / flagged.max(1) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_random_and_inverted_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
        assert_eq!(average_precision(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        // Frauds ranked 1st and 3rd: (1/1 + 2/3) / 2.
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]);
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn alert_rate_threshold_flags_that_share() {
        let scores: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let threshold = threshold_for_alert_rate(&scores, 0.01);
        assert_eq!(threshold, 990.0);
        let labels: Vec<bool> = (0..1000).map(|i| i >= 995).collect();
        let (recall, precision) = recall_precision_at(&scores, &labels, threshold);
        assert_eq!(recall, 1.0);
        assert_eq!(precision, 0.5);
    }
}
