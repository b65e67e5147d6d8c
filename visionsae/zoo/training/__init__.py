"""The scripts that made the zoo's shipped models (``visionsae zoo ...``): the judge, the
text-to-image model, the VQA model, their SAEs and concept sets. Each reproduces its folder of
``assets/zoo`` (see assets/zoo/README.md); the loaders in :mod:`visionsae.zoo` never import them."""
