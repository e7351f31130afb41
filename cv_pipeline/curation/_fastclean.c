/* The cleaner's hot path in C: parse a post body with selectolax's own Lexbor, walk the tree, apply
 * rule 4 and lay the text out, in one call per body.
 *
 * It reproduces cleaner.py's definition exactly (`_mark`, then `normalize_chars`, then
 * `_layout(_collapse(...))`), and hands every body it is not sure of back to the Python cleaner by
 * returning None: notices ("notice" in the HTML, a blockquote that may be the duplicate notice),
 * dropped elements (script, style, ...), NUL, text that is not valid UTF-8, an <ol start> that is
 * not plain ASCII digits, node kinds other than elements, text and comments, and (rule 4, "ascii")
 * characters outside cleaner._fast_eligible's set, for which the rule needs NFC over the whole text.
 * cleaner.py stays the reference: the tests compare the two on every corpus and on generated HTML.
 *
 * Lexbor is not linked: selectolax's extension module carries it, with its functions exported, and
 * `setup()` looks them up in that module by name (dlsym) when cleaner.py is imported. Only Lexbor's
 * functions are used, never its structs' layout (the "_noi" functions are Lexbor's non-inline
 * accessors, there for bindings like this one); tag ids come from cleaner.py, which reads them off
 * parses, and node kinds are the DOM's numbers, which Lexbor's enum uses. If a function is missing
 * (another selectolax), setup() fails and cleaner.py runs alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

typedef unsigned char lxb_char_t;
typedef uintptr_t lxb_tag_id_t;
typedef void node_t;

static void *(*lx_doc_create)(void);
static unsigned int (*lx_doc_parse)(void *, const lxb_char_t *, size_t);
static void *(*lx_doc_destroy)(void *);
static void *(*lx_body)(void *);
static node_t *(*lx_parse_fragment)(void *, void *, const lxb_char_t *, size_t);
static node_t *(*lx_first)(node_t *);
static node_t *(*lx_next)(node_t *);
static node_t *(*lx_parent)(node_t *);
static lxb_tag_id_t (*lx_tag)(node_t *);
static int (*lx_type)(node_t *);
static lxb_char_t *(*lx_text)(node_t *, size_t *);
static void *(*lx_free_text)(void *, lxb_char_t *);
static const lxb_char_t *(*lx_attr)(void *, const lxb_char_t *, size_t, size_t *);

/* Node kinds (DOM numbering, as Lexbor's enum) */
enum { T_ELEMENT = 1, T_TEXT = 3, T_COMMENT = 8 };

/* Per tag id: the markers cleaner._AROUND writes before and after the element, and what else it takes
 * (K_*); ids without an entry are inline elements (no markers, nothing else). */
enum { K_PLAIN = 0, K_QUOTE, K_OL, K_DROP, K_IMG, K_CODE, K_LAST };
#define TAG_IDS 1024
#define MARKER_MAX 7
typedef struct { char before[MARKER_MAX], after[MARKER_MAX]; unsigned char blen, alen, kind; } tag_t;
static tag_t tags[TAG_IDS];
static int ready = 0;

/* One document, reused: each body is parsed as the inner HTML of its <div>. */
static void *doc = NULL;
static node_t *container = NULL;
static long uses = 0;
static size_t parsed = 0;
/* Nodes and text are left in the document's memory arena (freeing them one by one cost more than
 * the rest of the walk): a new document every REUSE bodies or REUSE_BYTES of HTML bounds it. */
#define REUSE 256
#define REUSE_BYTES (4u << 20)
static int busy = 0;

/* ---------------------------------------------------------------------------------------------- */
/* Growable byte buffers */

typedef struct { char *p; size_t n, cap; } buf_t;

static int grow(buf_t *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra) cap *= 2;
    char *p = PyMem_RawRealloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}
static inline int put(buf_t *b, const char *s, size_t n) {
    if (grow(b, n)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}
static inline int putc_(buf_t *b, char c) {
    if (b->n == b->cap && grow(b, 1)) return -1;
    b->p[b->n++] = c;
    return 0;
}

static buf_t marked = {0}, normed = {0}, squashed = {0}, out = {0};

/* After a huge body, give its memory back rather than hold it for the life of the process. */
#define KEEP_BYTES (8u << 20)
static void trim(buf_t *b) {
    if (b->cap > KEEP_BYTES) PyMem_RawFree(b->p), b->p = NULL, b->n = b->cap = 0;
}
static void trim_buffers(void) { trim(&marked), trim(&normed), trim(&squashed), trim(&out); }

/* ---------------------------------------------------------------------------------------------- */
/* Rule 4: one cache entry per code point, filled by cleaner._char_rule (called once per character) */

typedef struct { char *rep; unsigned char len, count, eligible, known; } charinfo_t;
#define BMP 0x10000
static charinfo_t *cache[2] = {NULL, NULL}; /* [unicode, ascii] */
static PyObject *char_rule = NULL;           /* cleaner._char_rule(ascii_mode, cp) -> (rep, count, eligible) */

static int lookup(int ascii_mode, uint32_t cp, charinfo_t *info) {
    if (cp >= BMP) { info->eligible = 0; return 0; } /* emoji and the like: rare, hand back */
    if (!cache[ascii_mode]) {
        cache[ascii_mode] = PyMem_RawCalloc(BMP, sizeof(charinfo_t));
        if (!cache[ascii_mode]) return -1;
    }
    charinfo_t *slot = &cache[ascii_mode][cp];
    if (slot->known) { *info = *slot; return 0; }
    PyObject *res = PyObject_CallFunction(char_rule, "iI", ascii_mode, (unsigned int)cp);
    if (!res) { PyErr_Clear(); info->eligible = 0; return 0; } /* the Python cleaner will meet it and say */
    PyObject *rep;
    int count, eligible;
    if (!PyArg_ParseTuple(res, "Uii", &rep, &count, &eligible)) { Py_DECREF(res); return -1; }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(rep, &n);
    if (!s) { Py_DECREF(res); return -1; }
    if (n > 255) { Py_DECREF(res); info->eligible = 0; return 0; }
    charinfo_t fresh = {NULL, (unsigned char)n, (unsigned char)count, (unsigned char)eligible, 1};
    fresh.rep = PyMem_RawMalloc(n ? n : 1);
    if (!fresh.rep) { Py_DECREF(res); return -1; }
    memcpy(fresh.rep, s, n);
    Py_DECREF(res);
    *slot = fresh;
    *info = fresh;
    return 0;
}

static inline int removed_ascii_control(unsigned char c) {
    /* cleaner._ASCII_CONTROLS: 0x01-0x08, 0x0B, 0x0E-0x1F, 0x7F (tab, newline, CR and form feed stay) */
    return (c >= 1 && c <= 8) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F;
}

/* normalize_chars(marked, mode): 1 done, 0 hand back, -1 error */
static int normalize(const buf_t *in, buf_t *dst, int ascii_mode, long *changed) {
    const unsigned char *s = (const unsigned char *)in->p;
    size_t n = in->n, i = 0;
    dst->n = 0;
    if (grow(dst, n + 16)) return -1;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            if (removed_ascii_control(c)) { ++*changed; ++i; continue; }
            if (dst->n == dst->cap && grow(dst, 1)) return -1;
            dst->p[dst->n++] = (char)c;
            ++i;
            continue;
        }
        uint32_t cp;
        size_t len;
        if ((c & 0xE0) == 0xC0 && i + 1 < n) { cp = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F); len = 2; }
        else if ((c & 0xF0) == 0xE0 && i + 2 < n) {
            cp = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F); len = 3;
        } else if ((c & 0xF8) == 0xF0 && i + 3 < n) {
            cp = ((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
            len = 4;
        } else return 0; /* not UTF-8: Lexbor never writes that, but be safe */
        charinfo_t info;
        if (lookup(ascii_mode, cp, &info)) return -1;
        if (!info.eligible) return 0;
        *changed += info.count;
        if (info.count) {
            if (put(dst, info.rep, info.len)) return -1;
        } else if (put(dst, (const char *)s + i, len)) return -1;
        i += len;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* _collapse: whitespace runs become one space outside <pre> spans ("\0X" to the next "\0x") and
 * $$...$$ spans (`\$\$[^$\0]+\$\$`), found left to right as re.split(_PROTECTED) does; then
 * _merge_boundaries' four replacements. */

static inline int is_squashed(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f'; }

static int squash_into(buf_t *dst, const char *s, size_t n) {
    if (grow(dst, n)) return -1;
    char *o = dst->p + dst->n;
    size_t k = 0;
    int in_run = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (is_squashed(c)) {
            if (!in_run) o[k++] = ' '; /* a run: only its first character writes the space */
            in_run = 1;
        } else o[k++] = c, in_run = 0;
    }
    dst->n += k;
    return 0;
}

static char *find_marker(char *s, size_t n, const char *pat, size_t plen) {
    /* where `pat` (starting with NUL) first occurs: memchr to each NUL (glibc's memmem is slow here) */
    char *end = s + n;
    while (s + plen <= end) {
        s = memchr(s, '\0', (size_t)(end - s) - plen + 1);
        if (!s) return NULL;
        if (memcmp(s + 1, pat + 1, plen - 1) == 0) return s;
        s++;
    }
    return NULL;
}

static size_t replace_all(char *s, size_t n, const char *old, size_t olen, const char *new_, size_t nlen) {
    /* in place, nlen <= olen, left to right and non-overlapping like str.replace */
    char *hit = find_marker(s, n, old, olen);
    if (!hit) return n;
    size_t r = (size_t)(hit - s), w = r;
    while (hit) {
        size_t at = (size_t)(hit - s);
        memmove(s + w, s + r, at - r);
        w += at - r;
        memcpy(s + w, new_, nlen);
        w += nlen;
        r = at + olen;
        hit = r < n ? find_marker(s + r, n - r, old, olen) : NULL;
    }
    memmove(s + w, s + r, n - r);
    return w + n - r;
}

static int collapse(const buf_t *in, buf_t *dst) {
    const char *s = in->p;
    size_t n = in->n, i = 0, seg = 0;
    int no_pre_end = 0;
    dst->n = 0;
    while (i < n) {
        size_t end = 0;
        if (s[i] == '\0' && i + 1 < n && s[i + 1] == 'X' && !no_pre_end) {
            const char *close = NULL;
            for (const char *p = s + i + 2; p + 1 < s + n; p++) {
                p = memchr(p, '\0', (size_t)(s + n - p) - 1);
                if (!p) break;
                if (p[1] == 'x') { close = p; break; }
            }
            if (close) end = (size_t)(close - s) + 2;
            else no_pre_end = 1;
        } else if (s[i] == '$' && i + 1 < n && s[i + 1] == '$') {
            size_t j = i + 2;
            while (j < n && s[j] != '$' && s[j] != '\0') j++;
            if (j > i + 2 && j + 1 < n && s[j] == '$' && s[j + 1] == '$') end = j + 2;
        }
        if (end) {
            if (squash_into(dst, s + seg, i - seg) || put(dst, s + i, end - i)) return -1;
            i = seg = end;
        } else i++;
    }
    if (squash_into(dst, s + seg, n - seg)) return -1;
    size_t m = dst->n;
    m = replace_all(dst->p, m, "\0P \0P", 5, "\0P", 2);
    m = replace_all(dst->p, m, "\0P\0P", 4, "\0P", 2);
    m = replace_all(dst->p, m, "\0i \0I", 5, "\0I", 2);
    m = replace_all(dst->p, m, "\0i\0I", 4, "\0I", 2);
    dst->n = m;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* _layout, statement for statement; `out` is Python's list of strings, kept as one buffer plus the
 * start of its last element (only out[-1] is ever rewritten) and how many elements it has. */

#define MAX_INDENT 8

typedef struct { int ordered; long long next; } list_t;

typedef struct {
    buf_t *o;
    size_t last;     /* start of out[-1] */
    long items;      /* len(out) */
    int pending;
    int has_prefix;
    char prefix[64];
    size_t prefix_len;
    long prefix_depth;
    list_t *lists;
    long nlists, caplists;
    int last_space;
} layout_t;

static inline int append(layout_t *L, const char *s, size_t n) {
    L->last = L->o->n;
    L->items++;
    return put(L->o, s, n);
}
static inline void rstrip_last(layout_t *L) {
    buf_t *o = L->o;
    while (o->n > L->last && (o->p[o->n - 1] == ' ' || o->p[o->n - 1] == '\t' || o->p[o->n - 1] == '\n')) o->n--;
}
static int newlines(layout_t *L, int k) { return append(L, "\n\n", (size_t)k); }
static int indent(layout_t *L, long depth) {
    static const char spaces[2 * MAX_INDENT] = "                ";
    long d = depth < MAX_INDENT ? depth : MAX_INDENT;
    return append(L, spaces, (size_t)(2 * d));
}

static int emit(layout_t *L, const char *t, size_t n, int raw) {
    int owed = L->pending || L->has_prefix || L->items == 0;
    if (!raw && (owed || L->last_space)) while (n && *t == ' ') t++, n--;
    if (!n) return 0;
    if (owed) {
        if (L->pending && L->items) {
            rstrip_last(L);
            if (newlines(L, L->pending)) return -1;
        }
        if (L->has_prefix) { if (append(L, L->prefix, L->prefix_len)) return -1; }
        else if (L->nlists && L->items) { if (indent(L, L->nlists)) return -1; }
        L->pending = 0;
        L->has_prefix = 0;
    }
    if (append(L, t, n)) return -1;
    L->last_space = t[n - 1] == ' ';
    return 0;
}

static inline int maxi(int a, int b) { return a > b ? a : b; }

static int parse_start(const char *s, size_t n, long long *v) {
    /* The number after "\0O": what cleaner.py writes (an int clamped to +-1e9) is "-?[0-9]{1,10}"; 0 for
     * anything else (only lay_out's callers could pass it), which is handed back to Python's int(). */
    size_t i = s[0] == '-' && n > 1;
    if (n - i < 1 || n - i > 10) return 0;
    long long x = 0;
    for (size_t k = i; k < n; k++) {
        if (s[k] < '0' || s[k] > '9') return 0;
        x = x * 10 + (s[k] - '0');
    }
    *v = i ? -x : x;
    return 1;
}

/* 0 done, 1 hand back (a list number only Python reads), -1 out of memory */
static int layout(const buf_t *in, buf_t *dst) {
    layout_t L = {0};
    L.o = dst;
    dst->n = 0;
    int pre = 0, table = 0, cells = 0, ret = -1;
    long nested = 0;
    const char *s = in->p, *end = in->p + in->n;
    const char *piece = s;
    const char *z = memchr(s, '\0', in->n);
    if (!z) z = end;
    if (z > s && emit(&L, s, (size_t)(z - s), 0)) goto done;
    while (z < end) {
        piece = z + 1;
        z = memchr(piece, '\0', (size_t)(end - piece));
        if (!z) z = end;
        char code = piece < z ? piece[0] : 0;
        const char *t = piece < z ? piece + 1 : z;
        size_t tn = (size_t)(z - t);
        int soft = table && cells;
        if (soft && ((code && strchr("UOTIi", code)) || (nested && code && strchr("EtRC", code)))) {
            if (code == 'O') {
                const char *semi = memchr(t, ';', tn);
                if (semi) tn -= (size_t)(semi + 1 - t), t = semi + 1;
                else t += tn, tn = 0;
            }
            if (code == 'U' || code == 'O' || code == 'T') nested++;
            else if (code == 'E' || code == 't') nested--;
            if (emit(&L, " ", 1, 0)) goto done;
        } else if (code == 'P') {
            if (soft) { if (emit(&L, " ", 1, 0)) goto done; }
            else L.pending = maxi(L.pending, L.nlists ? 1 : 2);
        } else if (code == 'I') {
            if (L.has_prefix && 0 < L.prefix_depth && L.prefix_depth < L.nlists) {
                if (L.items) {
                    rstrip_last(&L);
                    if (newlines(&L, maxi(L.pending, 1))) goto done;
                }
                size_t k = L.prefix_len;
                while (k && L.prefix[k - 1] == ' ') k--;
                if (append(&L, L.prefix, k)) goto done;
                L.pending = 0, L.has_prefix = 0, L.last_space = 0;
            }
            L.prefix_depth = L.nlists;
            int ordered;
            long long num;
            if (L.nlists) {
                ordered = L.lists[L.nlists - 1].ordered;
                num = L.lists[L.nlists - 1].next++;
            } else ordered = 0, num = 1;
            L.pending = maxi(L.pending, 1);
            long depth = (L.nlists > 1 ? L.nlists : 1) - 1;
            if (depth > MAX_INDENT) depth = MAX_INDENT;
            memset(L.prefix, ' ', (size_t)(2 * depth));
            int k = ordered ? snprintf(L.prefix + 2 * depth, sizeof L.prefix - 2 * depth, "%lld. ", num)
                            : snprintf(L.prefix + 2 * depth, sizeof L.prefix - 2 * depth, "- ");
            L.prefix_len = (size_t)(2 * depth + k);
            L.has_prefix = 1;
        } else if (code == 'i') {
            L.pending = maxi(L.pending, 1);
            L.has_prefix = 0;
        } else if (code == 'U' || code == 'O') {
            if (L.nlists == L.caplists) {
                long cap = L.caplists ? 2 * L.caplists : 16;
                list_t *p = PyMem_RawRealloc(L.lists, (size_t)cap * sizeof(list_t));
                if (!p) goto done;
                L.lists = p, L.caplists = cap;
            }
            if (code == 'O') {
                const char *semi = memchr(t, ';', tn);
                if (!semi || !parse_start(t, (size_t)(semi - t), &L.lists[L.nlists].next)) { ret = 1; goto done; }
                L.lists[L.nlists].ordered = 1;
                tn -= (size_t)(semi + 1 - t), t = semi + 1;
            } else L.lists[L.nlists].ordered = 0, L.lists[L.nlists].next = 1;
            L.nlists++;
            L.pending = maxi(L.pending, L.nlists == 1 ? 2 : 1);
        } else if (code == 'E') {
            if (L.nlists) L.nlists--;
            L.pending = maxi(L.pending, L.nlists ? 1 : 2);
        } else if (code == 'B') {
            if (soft) { if (emit(&L, " ", 1, 0)) goto done; }
            else L.pending = L.pending + 1 < 2 ? L.pending + 1 : 2;
        } else if (code == 'C') {
            cells++;
            if (cells > 1) {
                int owed = L.pending || L.has_prefix || L.items == 0;
                if (owed || L.last_space) { if (emit(&L, "| ", 2, 1)) goto done; }
                else if (emit(&L, " | ", 3, 1)) goto done;
            }
        } else if (code == 'R') {
            L.pending = maxi(L.pending, 1);
            cells = 0;
        } else if (code == 'T' || code == 't') {
            if (code == 'T') table++;
            else table = table > 1 ? table - 1 : 0;
            cells = 0;
            L.pending = maxi(L.pending, L.nlists ? 1 : 2);
        } else if (code == 'X' || code == 'x') {
            if (code == 'X') pre++;
            else pre = pre > 1 ? pre - 1 : 0;
            L.pending = maxi(L.pending, L.nlists ? 1 : 2);
        }
        if (tn && emit(&L, t, tn, pre > 0)) goto done;
    }
    ret = 0;
done:
    PyMem_RawFree(L.lists);
    return ret;
}

/* ---------------------------------------------------------------------------------------------- */
/* The tree walk: cleaner._mark's markers and text, in document order */

static const tag_t inline_tag = {{0}, {0}, 0, 0, K_PLAIN};

static inline const tag_t *tag_of(node_t *node) {
    lxb_tag_id_t id = lx_tag(node);
    return id < TAG_IDS ? &tags[id] : &inline_tag;
}

/* Around a <code> holding "$" in a body with "$$": "\0c", so that no $$...$$ span starts or ends in code. */
static int code_marker(node_t *node, int dollars) {
    if (!dollars) return 0;
    size_t n = 0;
    lxb_char_t *t = lx_text(node, &n);
    int has = t && memchr(t, '$', n) != NULL;
    if (t) lx_free_text(doc, t);
    return has ? put(&marked, "\0c", 2) : 0;
}

/* The ASCII characters Python's str.strip() removes */
static inline int py_space(unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F); }

/* A blockquote that rule 2 might remove (its text starts with the duplicate notice's words): hand back. */
static int maybe_duplicate_notice(node_t *node) {
    size_t n = 0;
    lxb_char_t *t = lx_text(node, &n);
    if (!t) return 0;
    size_t i = 0;
    while (i < n && py_space(t[i])) i++;
    int maybe = i < n && (t[i] >= 0x80 || (n - i >= 18 && memcmp(t + i, "Possible Duplicate", 18) == 0) ||
                          (n - i >= 13 && memcmp(t + i, "This question", 13) == 0));
    lx_free_text(doc, t);
    return maybe;
}

/* <ol start>: 1 with a value, 0 hand back (not plain ASCII: Python's int() decides), *start set */
static int ol_start(node_t *node, long long *start) {
    size_t n = 0;
    const lxb_char_t *v = lx_attr(node, (const lxb_char_t *)"start", 5, &n);
    *start = 1;
    if (!v || n == 0) return 1;
    size_t i = 0, j = n;
    for (size_t k = 0; k < n; k++) if (v[k] >= 0x80 || v[k] == '_') return 0;
    while (i < j && py_space(v[i])) i++;
    while (j > i && py_space(v[j - 1])) j--;
    int neg = 0;
    if (i < j && (v[i] == '+' || v[i] == '-')) neg = v[i] == '-', i++;
    if (i == j) return 1; /* int() refuses it: 1 */
    long long x = 0;
    for (size_t k = i; k < j; k++) {
        if (v[k] < '0' || v[k] > '9') return 1;
        if (x <= 1000000000LL) x = x * 10 + (v[k] - '0');
    }
    /* Python's int() refuses more than sys.get_int_max_str_digits() digits (4300 by default, leading zeros
     * included; 640 at the least): a long run is Python's to read. */
    if (j - i > 18) return 0;
    if (x > 1000000000LL) x = 1000000000LL;
    *start = neg ? -x : x;
    return 1;
}

/* 1 done, 0 hand back, -1 error */
static int walk(node_t *root, int dollars, long *images) {
    node_t *node = lx_first(root);
    char num[32];
    while (node) {
        int type = lx_type(node);
        int descend = 0;
        if (type == T_TEXT) {
            size_t n = 0;
            lxb_char_t *t = lx_text(node, &n);
            if (t) {
                int err = put(&marked, (const char *)t, n);
                if (err) return -1;
            }
        } else if (type == T_ELEMENT) {
            const tag_t *tag = tag_of(node);
            int err = 0;
            switch (tag->kind) {
            case K_DROP: return 0;
            case K_QUOTE: if (maybe_duplicate_notice(node)) return 0; break;
            case K_OL: { /* its opening marker carries the start number */
                long long start;
                if (!ol_start(node, &start)) return 0;
                int k = snprintf(num, sizeof num, "%lld;", start);
                err = put(&marked, "\0O", 2) || put(&marked, num, (size_t)k);
                break;
            }
            case K_IMG: ++*images; break;
            case K_CODE: err = code_marker(node, dollars); break;
            default: break;
            }
            if (err || put(&marked, tag->before, tag->blen)) return -1;
            descend = 1;
        } else if (type != T_COMMENT) return 0; /* CDATA, processing instructions: hand back */
        node_t *child = descend ? lx_first(node) : NULL;
        if (child) { node = child; continue; }
        /* leave this node and every ancestor whose last child it is */
        for (;;) {
            if (lx_type(node) == T_ELEMENT) {
                const tag_t *tag = tag_of(node);
                if (put(&marked, tag->after, tag->alen) || (tag->kind == K_CODE && code_marker(node, dollars)))
                    return -1;
            }
            node_t *next = lx_next(node);
            if (next) { node = next; break; }
            node = lx_parent(node);
            if (!node || node == root) return 1;
        }
    }
    return 1;
}

static int fresh_document(void) {
    if (doc) lx_doc_destroy(doc);
    doc = lx_doc_create();
    container = NULL;
    if (!doc) return -1;
    if (lx_doc_parse(doc, (const lxb_char_t *)"<div></div>", 11) != 0) return -1;
    void *body = lx_body(doc);
    container = body ? lx_first(body) : NULL;
    uses = 0;
    parsed = 0;
    return container ? 0 : -1;
}

/* normalize_chars, then _layout(_collapse(...)), on `marked`: a new str, None to hand back, NULL on error.
 * A character lookup runs Python code, which may let another thread in: it finds `busy` set and takes
 * the Python cleaner, so these buffers stay ours. */
static PyObject *finish(int ascii_mode, long *changed) {
    int normalized = normalize(&marked, &normed, ascii_mode, changed);
    if (normalized < 0) return NULL;
    if (normalized == 0) return Py_NewRef(Py_None);
    int laid_out = collapse(&normed, &squashed) ? -1 : layout(&squashed, &out);
    if (laid_out) return laid_out < 0 ? PyErr_NoMemory() : Py_NewRef(Py_None);
    size_t a = 0, b = out.n;
    while (a < b && py_space((unsigned char)out.p[a])) a++;
    while (b > a && py_space((unsigned char)out.p[b - 1])) b--;
    return PyUnicode_DecodeUTF8(out.p + a, (Py_ssize_t)(b - a), "strict");
}

/* lay_out(marked: str, ascii: bool) -> (text, chars_changed) | None: the same rule 4 and layout on text
 * that already carries cleaner._mark's markers (the benchmark gives it BeautifulSoup's). */
static PyObject *fc_lay_out(PyObject *self, PyObject *args) {
    PyObject *text;
    int ascii_mode;
    if (!PyArg_ParseTuple(args, "Up", &text, &ascii_mode)) return NULL;
    if (!ready || busy) Py_RETURN_NONE;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(text, &n);
    if (!s) { PyErr_Clear(); Py_RETURN_NONE; }
    busy = 1;
    PyObject *result = NULL;
    marked.n = 0;
    long changed = 0;
    if (n == 0) result = Py_BuildValue("(si)", "", 0);
    else if (!put(&marked, s, (size_t)n)) {
        PyObject *laid_out = finish(ascii_mode, &changed);
        result = laid_out && laid_out != Py_None ? Py_BuildValue("(Nl)", laid_out, changed) : laid_out;
    } else PyErr_NoMemory();
    trim_buffers();
    busy = 0;
    return result;
}

/* clean(html: str, ascii: bool) -> (text, has_pre, images, chars_changed) | None */
static PyObject *fc_clean(PyObject *self, PyObject *args) {
    PyObject *html;
    int ascii_mode;
    if (!PyArg_ParseTuple(args, "Up", &html, &ascii_mode)) return NULL;
    if (!ready || busy) Py_RETURN_NONE;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(html, &n);
    if (!s) { PyErr_Clear(); Py_RETURN_NONE; } /* lone surrogates: the Python cleaner repairs them */
    if (n == 0) return Py_BuildValue("(sOii)", "", Py_False, 0, 0);
    /* s is NUL-terminated: with no NUL inside, strstr (much faster here than glibc's memmem) */
    if (strlen(s) != (size_t)n || strstr(s, "notice")) Py_RETURN_NONE;
    int dollars = strstr(s, "$$") != NULL;
    busy = 1;
    PyObject *result = NULL;
    if ((!container || uses >= REUSE || parsed >= REUSE_BYTES) && fresh_document()) {
        PyErr_SetString(PyExc_MemoryError, "lexbor: cannot create a document");
        goto done;
    }
    uses++;
    parsed += (size_t)n;
    node_t *wrapper = lx_parse_fragment(doc, container, (const lxb_char_t *)s, (size_t)n);
    if (!wrapper) { result = Py_NewRef(Py_None); goto done; }
    long images = 0;
    marked.n = 0;
    int walked = walk(wrapper, dollars, &images);
    if (walked <= 0) {
        if (walked < 0) PyErr_NoMemory();
        else result = Py_NewRef(Py_None);
        goto done;
    }
    if (marked.n == 0) { result = Py_BuildValue("(sOli)", "", Py_False, images, 0); goto done; }
    int has_pre = 0;
    for (const char *p = marked.p; (p = memchr(p, '\0', (size_t)(marked.p + marked.n - p))) != NULL; p++)
        if (p + 1 < marked.p + marked.n && p[1] == 'X') { has_pre = 1; break; }
    long changed = 0;
    PyObject *text = finish(ascii_mode, &changed);
    if (text && text != Py_None) result = Py_BuildValue("(NOll)", text, has_pre ? Py_True : Py_False, images, changed);
    else result = text;
done:
    trim_buffers();
    busy = 0;
    return result;
}

/* setup(lexbor_module_path, markers: dict[int, (bytes, bytes)], kinds: dict[int, int], char_rule) -> None;
 * raises if Lexbor is not usable */
static PyObject *fc_setup(PyObject *self, PyObject *args) {
    const char *path;
    PyObject *marker_map, *kind_map, *rule;
    if (!PyArg_ParseTuple(args, "sO!O!O", &path, &PyDict_Type, &marker_map, &PyDict_Type, &kind_map, &rule))
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) return PyErr_Format(PyExc_ImportError, "cannot open %s: %s", path, dlerror());
#define SYM(var, name)                                                                      \
    *(void **)(&var) = dlsym(h, name);                                                      \
    if (!var) return PyErr_Format(PyExc_ImportError, "%s has no function %s", path, name);
    SYM(lx_doc_create, "lxb_html_document_create")
    SYM(lx_doc_parse, "lxb_html_document_parse")
    SYM(lx_doc_destroy, "lxb_html_document_destroy")
    SYM(lx_body, "lxb_html_document_body_element_noi")
    SYM(lx_parse_fragment, "lxb_html_document_parse_fragment")
    SYM(lx_first, "lxb_dom_node_first_child_noi")
    SYM(lx_next, "lxb_dom_node_next_noi")
    SYM(lx_parent, "lxb_dom_node_parent_noi")
    SYM(lx_tag, "lxb_dom_node_tag_id_noi")
    SYM(lx_type, "lxb_dom_node_type_noi")
    SYM(lx_text, "lxb_dom_node_text_content")
    SYM(lx_free_text, "lxb_dom_document_destroy_text_noi")
    SYM(lx_attr, "lxb_dom_element_get_attribute")
#undef SYM
    memset(tags, 0, sizeof tags);
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(marker_map, &pos, &key, &value)) {
        long id = PyLong_AsLong(key);
        const char *before, *after;
        Py_ssize_t blen, alen;
        if (PyErr_Occurred() || !PyArg_ParseTuple(value, "y#y#", &before, &blen, &after, &alen)) return NULL;
        if (id < 0 || id >= TAG_IDS || blen > MARKER_MAX || alen > MARKER_MAX)
            return PyErr_Format(PyExc_ValueError, "tag id %ld out of range, or a marker too long", id);
        memcpy(tags[id].before, before, (size_t)blen), tags[id].blen = (unsigned char)blen;
        memcpy(tags[id].after, after, (size_t)alen), tags[id].alen = (unsigned char)alen;
    }
    pos = 0;
    while (PyDict_Next(kind_map, &pos, &key, &value)) {
        long id = PyLong_AsLong(key), kind = PyLong_AsLong(value);
        if (PyErr_Occurred()) return NULL;
        if (id < 0 || id >= TAG_IDS || kind < 0 || kind >= K_LAST)
            return PyErr_Format(PyExc_ValueError, "tag id %ld or kind %ld out of range", id, kind);
        tags[id].kind = (unsigned char)kind;
    }
    Py_XSETREF(char_rule, Py_NewRef(rule));
    if (fresh_document()) return PyErr_Format(PyExc_ImportError, "lexbor: cannot create a document");
    ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", fc_setup, METH_VARARGS,
     "setup(lexbor_module_path, markers, kinds, char_rule): find Lexbor, learn each tag's markers and kind."},
    {"clean", fc_clean, METH_VARARGS,
     "clean(html, ascii) -> (text, has_pre, images_dropped, chars_normalized), or None to hand the body back."},
    {"lay_out", fc_lay_out, METH_VARARGS,
     "lay_out(marked, ascii) -> (text, chars_normalized) for text with cleaner._mark's markers, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastclean", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastclean(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyModule_AddIntConstant(m, "QUOTE", K_QUOTE);
    PyModule_AddIntConstant(m, "OL", K_OL);
    PyModule_AddIntConstant(m, "DROP", K_DROP);
    PyModule_AddIntConstant(m, "IMG", K_IMG);
    PyModule_AddIntConstant(m, "CODE", K_CODE);
    return m;
}
