"""The seed's Python functions, copied unchanged from custom-training.rst (the second
``get_custom_predictions``, for one tag, renamed ``get_custom_predictions_for_tag``).

They name http://127.0.0.1:5000; ``load`` runs them against any port instead, so the tests never
need port 5000 (a ``tagsmith serve`` of the user's own may hold it).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import requests


def add_image(img, image_id=None):
    with open(img,'rb') as image:
        data = {'data': image}
        url = 'http://127.0.0.1:5000/custom/add'
        if image_id:
            url += '?image_id=' + image_id
        r = requests.post(url, files=data).json()
    return r


def assign_image(sample_type, tag, image_id):
    url = 'http://127.0.0.1:5000/custom/assign/%s/%s/%s'%(image_id, sample_type, tag)
    r = requests.get(url).json()
    return r


def get_custom_predictions_for_tag(img, tag):
   with open(img,'rb') as image:
       data = {'data': image}
       pred = requests.post('http://127.0.0.1:5000/predict/custom/%s'%tag, files=data).json()
   return pred


def get_custom_predictions(img):
   with open(img,'rb') as image:
       data = {'data': image}
       pred = requests.post('http://127.0.0.1:5000/predict/custom', files=data).json()
   return pred


def get_predictions(img):
   with open(img,'rb') as image:
       data = {'data': image}
       pred = requests.post('http://127.0.0.1:5000/predict', files=data).json()
   return pred


def get_predictions_added(image_id, tag=None):
    if tag is None:
        pred = requests.get('http://127.0.0.1:5000/custom/predict/%s'%(image_id)).json()
    else:
        pred = requests.get('http://127.0.0.1:5000/custom/predict/%s/%s'%(tag, image_id)).json()
    return pred


def load(port: int) -> SimpleNamespace:
    """This module's snippets, exactly as written but for the port they talk to."""
    source = Path(__file__).read_text().replace("127.0.0.1:5000", f"127.0.0.1:{port}")
    namespace: dict[str, object] = {"__name__": "seed_snippets", "requests": requests}
    exec(compile(source, __file__, "exec"), namespace)
    return SimpleNamespace(**namespace)
