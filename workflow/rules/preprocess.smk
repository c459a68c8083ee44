# Preprocessing. Analogy track: green channel, confocal crop around the TEM footprint,
# both resampled to preprocess.px_per_um (paper: 14.52), landmarks in that frame, rough
# similarity start.
# Fiducial track: bead channel as float at native sampling (resampling to 14.52 px/um
# would shrink a 100 nm bead to 1.5 px).


rule preprocess_analogy:
    input:
        unpack(case_files),
    output:
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
        start=f"{R}/preprocessed/{{case}}/start_transform.json",
        frame=f"{R}/preprocessed/{{case}}/frame.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        case=case_record,
        preprocess=settings("preprocess", ("px_per_um", "margin_um")),
    log:
        f"{R}/logs/preprocess/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/preprocess.py"


rule preprocess_fiducial:
    input:
        unpack(case_files),
    output:
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
        frame=f"{R}/preprocessed/{{case}}/frame.json",
    wildcard_constraints:
        case=constraint(cases_of("fiducial")),
    params:
        case=case_record,
    log:
        f"{R}/logs/preprocess/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/preprocess.py"
