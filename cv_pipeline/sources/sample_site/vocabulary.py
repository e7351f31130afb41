"""The words the sample corpus is built from: statistics topics, sentence templates, names, snippets.

All of this text was written for this project (it is not copied from Cross Validated). Fragments
marked *HTML* are already valid post HTML (entities escaped, MathJax left as raw ``$...$`` text the
way the site stores it); plain fragments are escaped by the generator before they enter a body.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    tags: tuple[str, ...]
    things: tuple[str, ...]  # plain: methods/models the question is about
    quantities: tuple[str, ...]  # HTML: what gets estimated or reported
    math_inline: tuple[str, ...]  # HTML, without the surrounding $
    math_display: tuple[str, ...]  # HTML, without the surrounding $$
    links: tuple[tuple[str, str], ...]  # (url, plain anchor text)
    code: tuple[str, ...]  # plain source code (escaped when embedded)


TOPICS: tuple[Topic, ...] = (
    Topic(
        "regression",
        ("regression", "multiple-regression", "least-squares", "linear-model", "interpretation", "r"),
        ("ordinary least squares", "a linear model with an interaction term", "multiple regression",
         "a model with a quadratic term", "weighted least squares"),
        ("the coefficient estimates", "the standard errors", "$R^2$", "the residual variance", "the adjusted $R^2$"),
        ("\\hat\\beta", "y_i = \\beta_0 + \\beta_1 x_i + \\varepsilon_i", "\\varepsilon \\sim N(0, \\sigma^2 I)",
         "\\operatorname{Var}(\\hat\\beta) = \\sigma^2 (X^\\top X)^{-1}"),
        ("\\hat\\beta = (X^\\top X)^{-1} X^\\top y",
         "R^2 = 1 - \\frac{\\sum_i (y_i - \\hat y_i)^2}{\\sum_i (y_i - \\bar y)^2}"),
        (("https://en.wikipedia.org/wiki/Ordinary_least_squares", "ordinary least squares"),
         ("https://en.wikipedia.org/wiki/Gauss%E2%80%93Markov_theorem", "Gauss–Markov theorem")),
        ("fit <- lm(y ~ x1 * x2, data = df)\nsummary(fit)\nconfint(fit, level = 0.95)",
         "import statsmodels.api as sm\nX = sm.add_constant(df[[\"x1\", \"x2\"]])\nres = sm.OLS(df[\"y\"], X).fit()\nprint(res.summary())"),
    ),
    Topic(
        "p-values",
        ("hypothesis-testing", "p-value", "statistical-significance", "t-test", "multiple-comparisons"),
        ("a two-sample t-test", "a permutation test", "Welch's t-test", "a chi-squared test of independence",
         "a Bonferroni correction"),
        ("the p-value", "the test statistic", "the false discovery rate", "the type I error rate", "the power"),
        ("p &lt; 0.05", "H_0: \\mu_1 = \\mu_2", "\\alpha = 0.05", "P(T \\geq t \\mid H_0)", "1 - \\beta"),
        ("t = \\frac{\\bar x_1 - \\bar x_2}{\\sqrt{s_1^2/n_1 + s_2^2/n_2}}",
         "p = P\\left(|T| \\geq |t_{\\text{obs}}| \\mid H_0\\right)"),
        (("https://en.wikipedia.org/wiki/P-value", "the definition of a p-value"),
         ("https://www.amstat.org/", "the ASA statement on p-values")),
        ("t.test(x, y, var.equal = FALSE)\np.adjust(pvals, method = \"BH\")",
         "from scipy import stats\nt, p = stats.ttest_ind(a, b, equal_var=False)\nprint(f\"t = {t:.3f}, p = {p:.4f}\")"),
    ),
    Topic(
        "bayesian",
        ("bayesian", "prior", "posterior", "mcmc", "conjugate-prior"),
        ("a hierarchical Bayesian model", "a Beta–Binomial model", "Gibbs sampling", "a weakly informative prior",
         "Hamiltonian Monte Carlo"),
        ("the posterior mean", "the credible interval", "the marginal likelihood", "the prior predictive distribution",
         "the effective sample size"),
        ("\\theta \\sim \\text{Beta}(a, b)", "p(\\theta \\mid y) \\propto p(y \\mid \\theta)\\, p(\\theta)",
         "\\mu \\sim N(0, 10^2)", "\\sigma \\sim \\text{Half-Cauchy}(0, 5)"),
        ("p(\\theta \\mid y) = \\frac{p(y \\mid \\theta)\\, p(\\theta)}{\\int p(y \\mid \\theta')\\, p(\\theta')\\, d\\theta'}",
         "\\text{Beta}(a + k,\\; b + n - k)"),
        (("https://en.wikipedia.org/wiki/Conjugate_prior", "conjugate priors"),
         ("https://mc-stan.org/users/documentation/", "the Stan documentation")),
        ("model {\n  mu ~ normal(0, 10);\n  sigma ~ cauchy(0, 5);\n  y ~ normal(mu, sigma);\n}",
         "import numpy as np\nrng = np.random.default_rng(1)\ndraws = rng.beta(1 + k, 1 + n - k, size=10_000)\nprint(np.quantile(draws, [0.025, 0.975]))"),
    ),
    Topic(
        "cross-validation",
        ("cross-validation", "machine-learning", "model-selection", "overfitting", "hyperparameter"),
        ("10-fold cross-validation", "leave-one-out cross-validation", "nested cross-validation",
         "a held-out test set", "repeated k-fold cross-validation"),
        ("the out-of-sample error", "the cross-validated AUC", "the variance of the CV estimate",
         "the optimism of the training error"),
        ("\\text{CV}_{(k)} = \\frac{1}{k} \\sum_{i=1}^k \\text{MSE}_i", "k = 10", "\\hat f^{(-i)}", "n - n/k"),
        ("\\text{CV}_{(n)} = \\frac{1}{n} \\sum_{i=1}^{n} \\left(\\frac{y_i - \\hat y_i}{1 - h_{ii}}\\right)^2",),
        (("https://en.wikipedia.org/wiki/Cross-validation_(statistics)", "cross-validation"),
         ("https://scikit-learn.org/stable/modules/cross_validation.html", "the scikit-learn guide")),
        ("from sklearn.model_selection import cross_val_score, KFold\ncv = KFold(n_splits=10, shuffle=True, random_state=0)\nscores = cross_val_score(model, X, y, cv=cv, scoring=\"roc_auc\")\nprint(scores.mean(), scores.std())",
         "library(caret)\nctrl <- trainControl(method = \"repeatedcv\", number = 10, repeats = 5)\nfit <- train(y ~ ., data = df, method = \"glmnet\", trControl = ctrl)"),
    ),
    Topic(
        "bootstrap",
        ("bootstrap", "resampling", "confidence-interval", "standard-error", "nonparametric"),
        ("the nonparametric bootstrap", "the percentile bootstrap", "the BCa bootstrap", "a block bootstrap",
         "the jackknife"),
        ("the bootstrap standard error", "the percentile interval", "the bias correction", "the bootstrap distribution"),
        ("B = 2000", "\\hat\\theta^*_b", "\\hat\\theta^*_{(0.025)}", "\\operatorname{se}_B"),
        ("\\widehat{\\operatorname{se}}_B = \\sqrt{\\frac{1}{B-1} \\sum_{b=1}^{B} \\left(\\hat\\theta^*_b - \\bar\\theta^*\\right)^2}",),
        (("https://en.wikipedia.org/wiki/Bootstrapping_(statistics)", "the bootstrap"),
         ("https://cran.r-project.org/package=boot", "the boot package")),
        ("library(boot)\nmed <- function(d, i) median(d[i])\nb <- boot(x, med, R = 2000)\nboot.ci(b, type = c(\"perc\", \"bca\"))",
         "import numpy as np\nrng = np.random.default_rng(42)\nboot = [np.median(rng.choice(x, size=len(x))) for _ in range(2000)]\nlo, hi = np.percentile(boot, [2.5, 97.5])"),
    ),
    Topic(
        "pca",
        ("pca", "dimensionality-reduction", "eigenvalues", "factor-analysis", "svd"),
        ("principal component analysis", "PCA on the correlation matrix", "a singular value decomposition",
         "exploratory factor analysis", "kernel PCA"),
        ("the loadings", "the proportion of variance explained", "the eigenvalues", "the component scores"),
        ("X = U D V^\\top", "\\lambda_1 \\geq \\lambda_2 \\geq \\dots \\geq \\lambda_p", "\\Sigma v = \\lambda v",
         "\\lambda_k / \\sum_j \\lambda_j"),
        ("\\Sigma = \\frac{1}{n-1} X^\\top X = V \\frac{D^2}{n-1} V^\\top",),
        (("https://en.wikipedia.org/wiki/Principal_component_analysis", "principal component analysis"),
         ("https://en.wikipedia.org/wiki/Singular_value_decomposition", "the SVD")),
        ("pc <- prcomp(df, center = TRUE, scale. = TRUE)\nsummary(pc)\nbiplot(pc)",
         "from sklearn.decomposition import PCA\npca = PCA(n_components=3).fit(X)\nprint(pca.explained_variance_ratio_)"),
    ),
    Topic(
        "distributions",
        ("distributions", "normal-distribution", "probability", "mathematical-statistics", "central-limit-theorem"),
        ("the central limit theorem", "a log-normal distribution", "the Student t distribution",
         "a mixture of two normals", "the Cauchy distribution"),
        ("the variance", "the expected value", "the kurtosis", "the moment generating function", "the median"),
        ("X \\sim N(\\mu, \\sigma^2)", "E[X] = \\mu", "\\bar X_n \\xrightarrow{d} N(\\mu, \\sigma^2/n)",
         "f(x) = \\frac{1}{\\sigma\\sqrt{2\\pi}} e^{-(x-\\mu)^2/(2\\sigma^2)}"),
        ("\\sqrt{n}\\,\\frac{\\bar X_n - \\mu}{\\sigma} \\xrightarrow{d} N(0, 1)",
         "\\operatorname{Var}(X) = E[X^2] - (E[X])^2"),
        (("https://en.wikipedia.org/wiki/Central_limit_theorem", "central limit theorem"),
         ("https://en.wikipedia.org/wiki/Cauchy_distribution", "the Cauchy distribution")),
        ("set.seed(1)\nx <- replicate(10000, mean(rexp(30)))\nhist(x, breaks = 50)\nqqnorm(x); qqline(x)",),
    ),
    Topic(
        "logistic",
        ("logistic", "generalized-linear-model", "classification", "odds-ratio", "binary-data"),
        ("logistic regression", "a probit model", "a GLM with a log link", "Firth's penalized likelihood",
         "a complementary log-log model"),
        ("the odds ratio", "the deviance", "the predicted probabilities", "the log-odds", "the Wald statistic"),
        ("\\operatorname{logit}(p) = \\log\\frac{p}{1-p}", "e^{\\beta_1}", "P(Y = 1 \\mid x) = \\frac{1}{1 + e^{-x^\\top\\beta}}"),
        ("\\ell(\\beta) = \\sum_{i=1}^n \\left[ y_i x_i^\\top\\beta - \\log\\left(1 + e^{x_i^\\top\\beta}\\right) \\right]",),
        (("https://en.wikipedia.org/wiki/Logistic_regression", "logistic regression"),
         ("https://en.wikipedia.org/wiki/Separation_(statistics)", "complete separation")),
        ("m <- glm(y ~ age + dose, family = binomial(link = \"logit\"), data = d)\nexp(cbind(OR = coef(m), confint(m)))",
         "from sklearn.linear_model import LogisticRegression\nclf = LogisticRegression(penalty=None, max_iter=1000).fit(X, y)\nprint(clf.coef_)"),
    ),
    Topic(
        "time-series",
        ("time-series", "arima", "forecasting", "autocorrelation", "stationarity"),
        ("an ARIMA model", "exponential smoothing", "a seasonal decomposition", "an AR(1) process",
         "a Dickey–Fuller test"),
        ("the autocorrelation function", "the forecast interval", "the differencing order", "the partial autocorrelation"),
        ("X_t = \\phi X_{t-1} + \\varepsilon_t", "|\\phi| &lt; 1", "\\rho(h) = \\phi^h", "\\nabla X_t = X_t - X_{t-1}"),
        ("\\gamma(h) = \\operatorname{Cov}(X_t, X_{t+h}) = \\frac{\\sigma^2 \\phi^{|h|}}{1 - \\phi^2}",),
        (("https://otexts.com/fpp3/", "Forecasting: Principles and Practice"),
         ("https://en.wikipedia.org/wiki/Autoregressive_integrated_moving_average", "ARIMA models")),
        ("library(forecast)\nfit <- auto.arima(y)\nacf(residuals(fit))\nplot(forecast(fit, h = 24))",
         "from statsmodels.tsa.arima.model import ARIMA\nres = ARIMA(y, order=(1, 1, 1)).fit()\nprint(res.forecast(steps=12))"),
    ),
    Topic(
        "mixed-models",
        ("mixed-model", "lme4-nlme", "random-effects-model", "repeated-measures", "multilevel-analysis"),
        ("a linear mixed model", "a random-intercept model", "a random-slope model", "a GLMM",
         "a repeated-measures ANOVA"),
        ("the random-effect variance", "the intraclass correlation", "the fixed-effect estimates",
         "the degrees of freedom"),
        ("y_{ij} = \\beta_0 + u_j + \\beta_1 x_{ij} + \\varepsilon_{ij}", "u_j \\sim N(0, \\tau^2)",
         "\\text{ICC} = \\tau^2 / (\\tau^2 + \\sigma^2)"),
        ("\\operatorname{Cov}(y_{ij}, y_{i'j}) = \\tau^2 \\quad (i \\neq i')",),
        (("https://cran.r-project.org/package=lme4", "lme4"),
         ("https://en.wikipedia.org/wiki/Mixed_model", "mixed models")),
        ("library(lme4)\nm <- lmer(score ~ time + (1 + time | subject), data = long)\nsummary(m)\nVarCorr(m)",),
    ),
    Topic(
        "mle",
        ("maximum-likelihood", "estimation", "fisher-information", "inference", "self-study"),
        ("maximum likelihood estimation", "the method of moments", "the EM algorithm", "profile likelihood",
         "the Cramér–Rao bound"),
        ("the Fisher information", "the likelihood ratio statistic", "the asymptotic variance", "the score function"),
        ("\\hat\\theta_{\\text{MLE}}", "I(\\theta) = -E\\left[\\partial^2 \\log f / \\partial\\theta^2\\right]",
         "\\operatorname{Var}(\\hat\\theta) \\geq 1/I(\\theta)", "\\hat\\sigma^2 = \\frac{1}{n}\\sum (x_i - \\bar x)^2"),
        ("\\ell(\\theta) = \\sum_{i=1}^{n} \\log f(x_i \\mid \\theta), \\qquad \\hat\\theta = \\arg\\max_\\theta \\ell(\\theta)",
         "-2 \\log \\Lambda \\xrightarrow{d} \\chi^2_k"),
        (("https://en.wikipedia.org/wiki/Maximum_likelihood_estimation", "maximum likelihood"),
         ("https://en.wikipedia.org/wiki/Cram%C3%A9r%E2%80%93Rao_bound", "Cramér–Rao bound")),
        ("nll <- function(p) -sum(dgamma(x, shape = p[1], rate = p[2], log = TRUE))\nopt <- optim(c(1, 1), nll, hessian = TRUE)\nsqrt(diag(solve(opt$hessian)))",),
    ),
    Topic(
        "clustering",
        ("clustering", "k-means", "unsupervised-learning", "distance", "hierarchical-clustering"),
        ("k-means clustering", "hierarchical clustering with Ward linkage", "a Gaussian mixture model", "DBSCAN",
         "spectral clustering"),
        ("the silhouette width", "the number of clusters", "the within-cluster sum of squares", "the BIC"),
        ("\\sum_{k=1}^K \\sum_{i \\in C_k} \\lVert x_i - \\mu_k \\rVert^2", "K = 3", "d(x, y) = \\lVert x - y \\rVert_2"),
        ("\\text{BIC} = -2 \\log \\hat L + p \\log n",),
        (("https://en.wikipedia.org/wiki/K-means_clustering", "k-means"),
         ("https://en.wikipedia.org/wiki/Silhouette_(clustering)", "silhouette")),
        ("km <- kmeans(scale(X), centers = 3, nstart = 25)\ntable(km$cluster, labels)",
         "from sklearn.cluster import KMeans\nlabels = KMeans(n_clusters=3, n_init=25, random_state=0).fit_predict(X)"),
    ),
    Topic(
        "neural-networks",
        ("neural-networks", "deep-learning", "machine-learning", "gradient-descent", "regularization"),
        ("a small feed-forward network", "stochastic gradient descent", "dropout", "batch normalization",
         "early stopping"),
        ("the validation loss", "the learning rate", "the weight decay", "the training loss"),
        ("\\theta_{t+1} = \\theta_t - \\eta \\nabla L(\\theta_t)", "\\eta = 10^{-3}", "\\lambda \\lVert w \\rVert_2^2"),
        ("L(\\theta) = -\\frac{1}{n}\\sum_{i=1}^{n} \\sum_{c} y_{ic} \\log \\hat p_{ic}(\\theta)",),
        (("https://en.wikipedia.org/wiki/Stochastic_gradient_descent", "stochastic gradient descent"),
         ("https://www.deeplearningbook.org/", "the Deep Learning book")),
        ("for epoch in range(50):\n    for xb, yb in loader:\n        opt.zero_grad()\n        loss = loss_fn(model(xb), yb)\n        loss.backward()\n        opt.step()",),
    ),
    Topic(
        "anova",
        ("anova", "post-hoc", "experiment-design", "interaction", "categorical-data"),
        ("a one-way ANOVA", "a two-way ANOVA with interaction", "Tukey's HSD", "the Kruskal–Wallis test",
         "an ANCOVA"),
        ("the F statistic", "the sum of squares", "the effect size $\\eta^2$", "the residual degrees of freedom"),
        ("F = \\frac{MS_{\\text{between}}}{MS_{\\text{within}}}", "df = (k - 1, N - k)", "\\eta^2 = SS_{\\text{effect}} / SS_{\\text{total}}"),
        ("SS_{\\text{total}} = SS_{\\text{between}} + SS_{\\text{within}}",),
        (("https://en.wikipedia.org/wiki/Analysis_of_variance", "analysis of variance"),
         ("https://en.wikipedia.org/wiki/Tukey%27s_range_test", "Tukey's range test")),
        ("a <- aov(yield ~ fert * block, data = crops)\nsummary(a)\nTukeyHSD(a, \"fert\")",),
    ),
    Topic(
        "correlation",
        ("correlation", "pearson-r", "spearman-rho", "causality", "association-measure"),
        ("Pearson's correlation", "Spearman's rank correlation", "Kendall's tau", "a partial correlation",
         "distance correlation"),
        ("the correlation coefficient", "the covariance", "the confidence interval for $\\rho$", "the coefficient of determination"),
        ("\\rho_{XY} = \\frac{\\operatorname{Cov}(X, Y)}{\\sigma_X \\sigma_Y}", "-1 \\leq r \\leq 1", "z = \\operatorname{artanh}(r)"),
        ("r = \\frac{\\sum_i (x_i - \\bar x)(y_i - \\bar y)}{\\sqrt{\\sum_i (x_i - \\bar x)^2 \\sum_i (y_i - \\bar y)^2}}",),
        (("https://en.wikipedia.org/wiki/Pearson_correlation_coefficient", "Pearson's r"),
         ("https://en.wikipedia.org/wiki/Anscombe%27s_quartet", "Anscombe's quartet")),
        ("cor.test(x, y, method = \"spearman\")\ncor(df, use = \"pairwise.complete.obs\")",
         "import numpy as np\nr = np.corrcoef(x, y)[0, 1]\nprint(round(r, 3))"),
    ),
)

# Plain-text title templates; {thing}/{thing2} come from the topic, {qty} is a quantity with HTML stripped.
TITLES: tuple[str, ...] = (
    "How do I interpret {qty} from {thing}?",
    "Why does {thing} give a different {qty_noun} than {thing2}?",
    "What is the intuition behind {thing}?",
    "Is it valid to use {thing} when the sample size is small?",
    "{Thing} vs. {thing2}: when should I use which?",
    "Difference between {thing} and {thing2}",
    "Can {qty} be negative?",
    "Should I report {qty} or {qty2}?",
    "Understanding {qty} in {thing}",
    "What's wrong with using {thing} here?",
    "Bias & variance of {qty} under {thing}",
    "What does \"{qty_noun}\" actually mean in {thing}?",
    "Why is p < 0.05 treated as the cut-off when using {thing}?",
    "How to choose between {thing} and {thing2} for a study with n = {n}?",
    "Explain {thing} to someone with no statistics background",
    "Is {thing} still useful when the data are not normal?",
    "How is {qty} computed in {software}'s {thing}?",
    "When is {thing} a bad idea?",
)

QUESTION_OPENERS: tuple[str, ...] = (
    "I am analysing data from {n} {units} and I have fitted {thing}.",
    "I have been reading about {thing} and I am confused about {qty}.",
    "In my thesis I use {thing} on a data set of {n} {units}.",
    "My supervisor suggested {thing}, but a reviewer asked why we did not use {thing2}.",
    "This is probably a basic question, but I could not find a clear answer about {qty}.",
    "I'm working through a textbook exercise on {thing} — the one with {n} {units}.",
    "We ran a small experiment with {n} {units} and want to report {qty}.",
)

QUESTION_DETAILS: tuple[str, ...] = (
    "When I compute {qty} I get {num}, which looks far too {adj} to me.",
    "The software reports {qty} as {num}, but my hand calculation gives something else.",
    "Everything I read says that {thing} assumes {assumption}, and I am not sure that holds here.",
    "I know that ${math}$ in theory, but I don't see how it applies to my case.",
    "The data are skewed (the median is {num} and the mean is {num2}), so I am worried about {qty}.",
    "As far as I understand, {thing2} would avoid the problem, but it feels like cheating…",
    "A colleague told me the “rule of thumb” is at least {n2} {units} per parameter — is that right?",
    "I simulated data with μ = {num} and σ = {num2}, with group sizes in the range {n2}–{n}.",
    "R &amp; Python agree when n &gt; {n2}, but not below that (the output is at the end).",
    "Using the Box–Cox transformation first doesn't change much, and I'd rather not transform at all.",
)

QUESTION_ASKS: tuple[str, ...] = (
    "Is my reasoning correct, or am I missing something obvious?",
    "What is the right way to think about this?",
    "Which of the two should I report, and why?",
    "Could someone explain what {qty} tells me here?",
    "Is there a reference that discusses this in detail?",
    "Does this mean my model is wrong?",
)

ANSWER_LEADS: tuple[str, ...] = (
    "The short answer is: it depends on what you want {qty} to describe.",
    "You are right to be suspicious of {qty} here.",
    "This is a common source of confusion, and it is not your fault — most textbooks gloss over it.",
    "Nothing is wrong with your calculation; the two numbers answer different questions.",
    "Let me add a slightly different perspective to the other answers.",
    "I would not use {thing} for this at all.",
    "Think of {thing} as a way of asking how much {qty} would change if you repeated the study.",
)

ANSWER_BODIES: tuple[str, ...] = (
    "Under {thing} the key quantity is ${math}$, so {qty} is only meaningful once you fix the scale of the data.",
    "With {n} {units} the asymptotic approximation is usually fine, but with fewer than {n2} it can be badly off.",
    "If the assumption of {assumption} fails, {thing2} is the safer choice; it gives up a little power in exchange for robustness.",
    "A quick simulation makes this concrete: draw data with a known {qty_noun}, apply {thing}, and look at how often you recover it.",
    "Note that {qty} is <em>not</em> a probability that the hypothesis is true; it is a statement about the data given the model.",
    "The estimate of {qty} is unbiased, but its variance grows quickly as {n} shrinks — that is what you are seeing.",
    "In practice I report both, and say clearly which one answers the research question.",
    "Keep in mind that <strong>{thing} does not fix a bad design</strong>: if the {units} are not independent, no correction will help.",
)

ANSWER_CLOSERS: tuple[str, ...] = (
    "Hope this helps.",
    "See also {link} for a longer discussion.",
    "For the details, {link} is a good starting point.",
    "{name}'s book has a readable chapter on exactly this.",
    "Edit: as pointed out in the comments, this assumes {assumption}.",
)

ASSUMPTIONS: tuple[str, ...] = (
    "independent observations", "normally distributed errors", "constant variance", "a correctly specified model",
    "no unmeasured confounding", "a large sample", "exchangeable units", "linearity on the link scale",
)

UNITS: tuple[str, ...] = ("patients", "participants", "plots", "schools", "mice", "customers", "days", "sensors", "trials")
ADJECTIVES: tuple[str, ...] = ("large", "small", "precise", "optimistic", "unstable")
SOFTWARE: tuple[str, ...] = ("R", "SPSS", "Stata", "SAS", "statsmodels", "scikit-learn", "JASP")

# People the answers cite (public historical figures; accents on purpose).
CITED: tuple[str, ...] = (
    "Fisher", "Neyman", "Pearson", "Cramér", "Fréchet", "Lévy", "Pólya", "Kolmogorov", "Gosset", "Tukey",
    "Efron", "Gelman", "Box", "Jaynes", "de Finetti", "Erdős", "Gauss", "Laplace",
)

FIRST_NAMES: tuple[str, ...] = (
    "Anna", "José", "Zoë", "Søren", "Łukasz", "Chloé", "Mehmet", "Priya", "Kenji", "Olga", "Björn", "Ngozi",
    "François", "Aoife", "Tomás", "Mei", "Ravi", "Sara", "Jürgen", "Ines", "Dmitri", "Hana", "Ahmed", "Emily",
    "Seán", "Nuno", "Ida", "Wei",
)
LAST_NAMES: tuple[str, ...] = (
    "Novak", "García", "Müller", "Kowalski", "Andersen", "O'Brien", "Nakamura", "Patel", "Silva", "Dubois",
    "Ivanova", "Okafor", "Jensen", "Rossi", "Kim", "Haddad", "Schäfer", "Ng", "Brown", "Lindqvist",
)

CLOSED_REASONS: tuple[str, ...] = (
    "Duplicate", "Needs more focus", "Needs details or clarity", "Opinion-based", "Not suitable for this site",
)

# Small tables for posts that show their data; plain cells, escaped by the generator.
TABLE_HEADERS: tuple[tuple[str, ...], ...] = (
    ("group", "n", "mean", "sd"),
    ("model", "AIC", "BIC", "log-lik"),
    ("fold", "train error", "test error"),
)
