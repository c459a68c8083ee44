# The embedded default: synthetic correlative cases with ground truth, from `seed`.


rule phantom_analogy:
    output:
        em=f"{R}/data/{{case}}/em.tif",
        lm=f"{R}/data/{{case}}/lm.tif",
        landmarks=f"{R}/data/{{case}}/landmarks.csv",
        ground_truth=f"{R}/data/{{case}}/ground_truth.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy", synthetic=True)),
    params:
        seed=config["seed"],
        index=lambda wc: synthetic_number(wc.case),
        phantom=config["synthetic"]["analogy"],
    log:
        f"{R}/logs/phantom_analogy/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/phantom_analogy/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        ENV
    script:
        "../../scripts/phantom.py"


rule phantom_fiducial:
    output:
        em=f"{R}/data/{{case}}/em.tif",
        lm=f"{R}/data/{{case}}/lm.tif",
        landmarks=f"{R}/data/{{case}}/landmarks.csv",
        ground_truth=f"{R}/data/{{case}}/ground_truth.json",
    wildcard_constraints:
        case=constraint(cases_of("fiducial", synthetic=True)),
    params:
        seed=config["seed"],
        index=lambda wc: synthetic_number(wc.case),
        phantom=config["synthetic"]["fiducial"],
        crowded=lambda wc: wc.case.startswith(CROWDED_PREFIX),
    log:
        f"{R}/logs/phantom_fiducial/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/phantom_fiducial/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/phantom.py"
