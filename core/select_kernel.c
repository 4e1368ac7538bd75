/* The selection pass over a block of similarity rows that the retrieval metrics and top-k search share
 * (core/select_kernel.py loads it; core/similarity.py's select_by_passes is the same on NumPy's passes).
 *
 * For each row: tau, the num-th largest of the maxima of `width` column groups (group j is column j of every chunk of
 * `width` columns; num groups give num items >= it), raised to t_last (the metrics: the R-th best positive's
 * similarity; top-k: -inf); then the items >= theta = min(tau, t_first) are counted, and extracted where
 * t_first >= tau (the metrics: the best positive is among them; top-k: t_first is +inf) and they are no more than
 * the row's cap.
 *
 * A row of the SOP test set is 240 KB: the first reading (the maxima) brings it from memory into the core's cache, the
 * second (count and extraction) reads it from there. NumPy's passes read each row from memory twice and run on one
 * thread (bench/eval_speed.py). The caller runs row ranges on several threads; this code has no state.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 32 /* columns compared at a time before looking for the items found in them */

/* The k-th largest (1-based) of v[0..n); v is reordered. */
static float kth_largest(float *v, int64_t n, int64_t k) {
  int64_t lo = 0, hi = n - 1, want = k - 1;
  while (lo < hi) {
    float pivot = v[lo + (hi - lo) / 2];
    int64_t i = lo, j = hi;
    while (i <= j) { /* Hoare partition, descending: [lo, j] >= pivot >= [i, hi] */
      while (v[i] > pivot) i++;
      while (v[j] < pivot) j--;
      if (i <= j) {
        float swap = v[i];
        v[i++] = v[j];
        v[j--] = swap;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return v[want]; /* between the two parts: equal to the pivot */
  }
  return v[want];
}

static void group_maxima(const float *row, int64_t padded, int64_t width, float *maxima) {
  memcpy(maxima, row, sizeof(float) * width);
  for (int64_t c = width; c < padded; c += width)
    for (int64_t j = 0; j < width; j++) maxima[j] = row[c + j] > maxima[j] ? row[c + j] : maxima[j];
}

/* Items >= theta in row[0, n); up to `room` of them stored in col/value while `store`. */
static int64_t count_and_store(const float *row, int64_t n, float theta, int store, int64_t room, int64_t *col,
                               float *value, int64_t *stored) {
  int64_t count = 0;
  int64_t c = 0;
  for (; c + CHUNK <= n; c += CHUNK) {
    int found = 0;
    for (int j = 0; j < CHUNK; j++) found += row[c + j] >= theta;
    if (found && store && count + found <= room)
      for (int j = 0; j < CHUNK; j++)
        if (row[c + j] >= theta) {
          col[*stored] = c + j;
          value[(*stored)++] = row[c + j];
        }
    count += found;
  }
  for (; c < n; c++)
    if (row[c] >= theta) {
      if (store && count < room) {
        col[*stored] = c;
        value[(*stored)++] = row[c];
      }
      count++;
    }
  return count;
}

/* rows x padded similarities s (row-major; padded a multiple of width); per row: num, t_first, t_last and cap as
 * above. Out per row: tau (inf where num is 0), count (items >= theta), found (items extracted into col/value,
 * `stride` slots a row; 0 where not extracted). Returns 0, or -1 where memory ran out. */
int select_rows(const float *s, int64_t rows, int64_t padded, int64_t width, const int64_t *num,
                const float *t_first, const float *t_last, const int64_t *cap, int64_t stride, float *tau,
                int64_t *count, int64_t *found, int64_t *col, float *value) {
  float *maxima = malloc(sizeof(float) * width);
  if (!maxima) return -1;
  for (int64_t i = 0; i < rows; i++) {
    const float *row = s + i * padded;
    found[i] = 0;
    if (num[i] <= 0) {
      tau[i] = INFINITY;
      count[i] = 0;
      continue;
    }
    group_maxima(row, padded, width, maxima);
    float bound = kth_largest(maxima, width, num[i]);
    tau[i] = bound > t_last[i] ? bound : t_last[i];
    int ranked = t_first[i] >= tau[i];
    float theta = ranked ? tau[i] : t_first[i];
    int64_t stored = 0;
    count[i] = count_and_store(row, padded, theta, ranked, cap[i], col + i * stride, value + i * stride, &stored);
    if (ranked && count[i] <= cap[i]) found[i] = stored;
  }
  free(maxima);
  return 0;
}
