/* forward_tree.h - forward pass over packed prefix trees, scoring only
 * selected next-token distributions (used by zero-shot evaluation).
 *
 * A batch is one row of n tokens cut into segments. Inside a segment every
 * token carries a branch id: 0 for the shared prefix (which comes first),
 * b > 0 for the tokens of branch b. Token i attends to token j iff both are
 * in the same segment, j <= i, and branch[j] is 0 or equal to branch[i]; its
 * RoPE position is pos[i]. With the prefix at positions 0..p-1 and each
 * branch at p, p+1, ..., every branch computes exactly what a separate
 * causal forward of prefix + branch computes (up to float rounding), so the
 * prefix runs once for all its branches and many segments share each
 * matrix product.
 *
 * Only the hidden states of rows[] go through the final norm and the head;
 * pair k asks for log softmax(logits of row rows[pair_row[k]])[pair_tgt[k]]
 * and whether pair_tgt[k] is that row's argmax (the lowest index among
 * equal maxima, as torch.argmax). */
#ifndef SPQR_FORWARD_TREE_H
#define SPQR_FORWARD_TREE_H

#include "model.h"

typedef struct spqr_tree_batch {
    int n;                  /* tokens in the batch                               */
    const int32_t *tokens;  /* [n]                                               */
    const int32_t *pos;     /* [n] RoPE position, < max_seq_len                  */
    const int32_t *branch;  /* [n] 0 = prefix of its segment, b > 0 = branch b   */
    int n_seg;              /* segment s: tokens seg_off[s] .. seg_off[s+1]-1    */
    const int32_t *seg_off; /* [n_seg + 1], seg_off[0] = 0, seg_off[n_seg] = n  */
    int n_rows;             /* rows whose next-token distribution is scored      */
    const int32_t *rows;    /* [n_rows] token indices, strictly increasing       */
    int n_pairs;
    const int32_t *pair_row; /* [n_pairs] index into rows[]                      */
    const int32_t *pair_tgt; /* [n_pairs] target token id                        */
} spqr_tree_batch;

/* Check a batch against a model configuration (ranges, ordering). */
spqr_status spqr_tree_batch_check(const spqr_config *c, const spqr_tree_batch *b);

/* logp[n_pairs] (natural log, summed in double from float logits) and
 * greedy[n_pairs] (1 if the target is the argmax) on the CPU. */
spqr_status spqr_tree_score(const spqr_model *m, const spqr_tree_batch *b, double *logp, uint8_t *greedy);

#endif
