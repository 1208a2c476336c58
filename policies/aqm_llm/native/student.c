/* The AQM-LLM student's whole decision in C: features, normalisation, MLP, softmax.
 *
 * Why: in Python and numpy the student takes ~30 us back to back, but ~300 us live, where
 * each decision comes 16 ms after the last one on a busy 2-core machine: every numpy call
 * then starts cold (one 162x64 matmul alone: p50 57 us). One C call runs the same arithmetic
 * in a few microseconds, cold or not.
 *
 * It mirrors, line for line, policies/aqm_llm/features.py (scalar_values, state_vector) and
 * student.py (Student.state_input, Student.logits, _softmax); tests/test_aqm_llm_student.py
 * checks it against them on random states. Compiled on first use (student_native.py).
 *
 * in:   [link_rate_bps, dt, then per class (l4s, classic) the 10 CLASS_KEYS values,
 *        then 4 histories of HIST doubles each (l4s sojourn, classic sojourn, l4s rate,
 *        classic rate), right-aligned: the last lens[i] entries are real]
 * out:  6 probabilities: (enqueue, drop, mark) for l4s, then for classic.
 */
#include <math.h>

#define HIST 16
#define N_SERIES 4
#define N_CLASS_KEYS 10
#define N_SCALARS (4 + 2 * (N_CLASS_KEYS + 5))
#define VECTOR_LEN (N_SCALARS + 2 * N_SERIES * HIST)
#define MAX_WIDTH 1024
#define MAX_LAYERS 8
#define CLIP 10.0

typedef struct {
    int n_layers;
    int sizes[MAX_LAYERS + 1]; /* sizes[0] == VECTOR_LEN, sizes[n_layers] == 6 */
    const float *w[MAX_LAYERS]; /* row-major [sizes[i]][sizes[i + 1]] */
    const float *b[MAX_LAYERS];
    const double *mean; /* VECTOR_LEN: the affine normalisation of student.py */
    const double *std;
} model_t;

static double maxd(double a, double b) { return a > b ? a : b; }
static double clip(double v) { return v < -CLIP ? -CLIP : (v > CLIP ? CLIP : v); }

/* features.scalar_values and state_vector: the raw vector */
static void raw_vector(const double *in, const int *lens, double *raw) {
    double link = maxd(in[0], 1.0);
    const double *l4s = in + 2, *cl = in + 2 + N_CLASS_KEYS;
    /* sojourn 0, sojourn_max 1, head_sojourn 2, backlog_bytes 3, backlog_pkts 4,
     * arrival_bps 5, departure_bps 6, arrivals 7, drops 8, marks 9 */
    raw[0] = log1p(link);
    raw[1] = in[1]; /* the second scalar as the caller computed it (dt_ms, anchor, 0) */
    raw[2] = (l4s[6] + cl[6]) / link;
    raw[3] = log1p((l4s[3] + cl[3]) * 8e3 / link);
    int j = 4;
    for (int c = 0; c < 2; c++) {
        const double *col = in + 2 + c * N_CLASS_KEYS;
        double v[N_CLASS_KEYS];
        for (int k = 0; k < N_CLASS_KEYS; k++) {
            v[k] = maxd(col[k], 0.0);
            raw[j++] = log1p(v[k]);
        }
        double arrivals = maxd(v[7], 1.0);
        raw[j++] = v[5] / link;
        raw[j++] = v[6] / link;
        raw[j++] = v[8] / arrivals;
        raw[j++] = v[9] / arrivals;
        raw[j++] = log1p(v[3] * 8e3 / link);
    }
    const double *hist = in + 2 + 2 * N_CLASS_KEYS;
    for (int s = 0; s < N_SERIES; s++) {
        int first = HIST - (lens[s] < HIST ? lens[s] : HIST);
        for (int t = 0; t < HIST; t++) {
            double value = 0.0, mask = 0.0;
            if (t >= first) {
                double h = hist[s * HIST + t];
                value = s < 2 ? log1p(maxd(h, 0.0)) : h / link;
                mask = 1.0;
            }
            raw[N_SCALARS + s * HIST + t] = value;
            raw[N_SCALARS + N_SERIES * HIST + s * HIST + t] = mask;
        }
    }
}

int student_forward(const model_t *m, const double *in, const int *lens, double *out) {
    double raw[VECTOR_LEN];
    float a[MAX_WIDTH], b[MAX_WIDTH];
    if (m->n_layers < 1 || m->n_layers > MAX_LAYERS || m->sizes[0] != VECTOR_LEN ||
        m->sizes[m->n_layers] != 6)
        return -1;
    raw_vector(in, lens, raw);
    /* Student.state_input: z-score, clip, padded history exactly 0 */
    for (int i = 0; i < VECTOR_LEN; i++) {
        double x = clip((raw[i] - m->mean[i]) / m->std[i]);
        if (i >= N_SCALARS && i < N_SCALARS + N_SERIES * HIST &&
            raw[i + N_SERIES * HIST] == 0.0)
            x = 0.0;
        a[i] = (float)x;
    }
    float *x = a, *y = b;
    for (int l = 0; l < m->n_layers; l++) {
        int n_in = m->sizes[l], n_out = m->sizes[l + 1];
        if (n_out > MAX_WIDTH)
            return -1;
        const float *w = m->w[l];
        for (int o = 0; o < n_out; o++)
            y[o] = m->b[l][o];
        for (int i = 0; i < n_in; i++) {
            float xi = x[i];
            if (xi == 0.0f)
                continue;
            const float *row = w + (long)i * n_out;
            for (int o = 0; o < n_out; o++)
                y[o] += xi * row[o];
        }
        if (l < m->n_layers - 1)
            for (int o = 0; o < n_out; o++)
                y[o] = y[o] > 0.0f ? y[o] : 0.0f;
        float *t = x;
        x = y;
        y = t;
    }
    for (int c = 0; c < 2; c++) { /* softmax per class, in double as _softmax */
        double top = x[3 * c], e[3], total = 0.0;
        for (int k = 1; k < 3; k++)
            top = maxd(top, x[3 * c + k]);
        for (int k = 0; k < 3; k++) {
            e[k] = exp((double)x[3 * c + k] - top);
            total += e[k];
        }
        for (int k = 0; k < 3; k++)
            out[3 * c + k] = e[k] / total;
    }
    return 0;
}
