# Analogy track: joint dictionaries learned from other cases, the confocal predicted from
# the TEM (sparse image analogies, paper sec. 4), and how good the prediction is.


rule learn_dictionary:
    input:
        unpack(training_files),
        checks=check_files("analogy"),  # the params read them (cases left out)
    output:
        dictionary=f"{R}/analogy/dictionaries/{{training}}.npz",
        figure=report(
            f"{R}/figures/dictionaries/{{training}}.png",
            caption="../report/dictionary_figure.rst",
            category="Image analogies",
            subcategory="dictionaries",
        ),
    wildcard_constraints:
        training=training_set_pattern(),
    params:
        analogy=settings("analogy", DICTIONARY),
        seed=config["seed"],
        training=lambda wc: wc.training.split(TRAINING_SEP),
        excluded=lambda wc: failed_cases("analogy"),  # never drawn for training
    log:
        f"{R}/logs/learn_dictionary/{{training}}.log",
    benchmark:
        f"{R}/benchmarks/learn_dictionary/{{training}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        ENV
    script:
        "../../scripts/learn_dictionary.py"


rule predict_sparse:
    input:
        dictionary=dictionary_file,
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
    output:
        predicted=f"{R}/analogy/{{case}}/sparse_predicted.tif",
        tem_denoised=f"{R}/analogy/{{case}}/sparse_tem_denoised.tif",
        decoupled=f"{R}/analogy/{{case}}/sparse_decoupled.tif",
        uncertainty=f"{R}/analogy/{{case}}/sparse_uncertainty.tif",
        confocal_denoised=f"{R}/analogy/{{case}}/confocal_denoised.tif",
        info=f"{R}/analogy/{{case}}/sparse_prediction.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        analogy=settings("analogy", PREDICTION),
    log:
        f"{R}/logs/predict_sparse/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/predict_sparse/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=120,
    conda:
        ENV
    script:
        "../../scripts/predict_sparse.py"


rule prediction_quality:
    input:
        unpack(lambda wc: {
            role: [f"{R}/{folder}/{n}/{name}" for n in usable_cases("analogy")]
            for role, folder, name in (
                ("em", "preprocessed", "em.tif"),
                ("lm", "preprocessed", "lm.tif"),
                ("frame", "preprocessed", "frame.json"),
                ("landmarks", "preprocessed", "landmarks.csv"),
                ("predicted", "analogy", "sparse_predicted.tif"),
                ("decoupled", "analogy", "sparse_decoupled.tif"),
                ("hertzmann", "analogy", "hertzmann_predicted.tif"),
            )
        }),
        checks=check_files("analogy"),  # the params read them (usable cases)
    output:
        report(
            f"{R}/tables/prediction_quality.csv",
            caption="../report/prediction_quality.rst",
            category="Tables",
        ),
    params:
        cases=lambda wc: usable_cases("analogy"),
        psf_fwhm_um=confocal_psf_fwhm_um(),
    log:
        f"{R}/logs/prediction_quality.log",
    benchmark:
        f"{R}/benchmarks/prediction_quality.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/prediction_quality.py"


rule predict_hertzmann:
    input:
        unpack(training_files),
        checks=check_files("analogy"),  # the params read them (training cases)
        test_em=f"{R}/preprocessed/{{case}}/em.tif",
    output:
        predicted=f"{R}/analogy/{{case}}/hertzmann_predicted.tif",
        source=f"{R}/analogy/{{case}}/hertzmann_source.npz",
        info=f"{R}/analogy/{{case}}/hertzmann_prediction.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        analogy=settings("analogy", TRAINING_PAIRS),
        hertzmann=config["hertzmann"],
        seed=config["seed"],
        training=lambda wc: training_cases(wc.case),
    log:
        f"{R}/logs/predict_hertzmann/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/predict_hertzmann/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    conda:
        ENV
    script:
        "../../scripts/predict_hertzmann.py"


rule figure_analogy:
    input:
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
        frame=f"{R}/preprocessed/{{case}}/frame.json",
        sparse=f"{R}/analogy/{{case}}/sparse_predicted.tif",
        hertzmann=f"{R}/analogy/{{case}}/hertzmann_predicted.tif",
        source=f"{R}/analogy/{{case}}/hertzmann_source.npz",
    output:
        report(
            f"{R}/figures/analogy/{{case}}.png",
            caption="../report/analogy_figure.rst",
            category="Image analogies",
            subcategory="{case}",
        ),
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    log:
        f"{R}/logs/figure_analogy/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/figure_analogy/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/figure_analogy.py"
