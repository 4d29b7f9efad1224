"The ipywidgets feature browser, constructed and driven headless against the tiny world of tests/dash_tiny.py."
import html
import pytest
import torch
from sae_tutorial.feature_data import DashboardConfig, gather_feature_data, feature_order
from sae_tutorial.widgets import FeatureBrowser, text_features_html
from dash_tiny import WORDS, CAT, tiny_tokenizer, tiny_model, tiny_store, cat_sae

torch.set_num_threads(2)
DOG = WORDS.index("dog")

@pytest.fixture(scope="module")
def data():
    return gather_feature_data(cat_sae(), tiny_store(), model=tiny_model()[0], cfg=DashboardConfig(n_top=5, left=3, right=1))

@pytest.fixture()
def browser(data):
    return FeatureBrowser.from_store(data, cat_sae(), tiny_store(), tiny_model()[0], tokenizer=tiny_tokenizer())

def centre_tokens(page: str) -> list[str]:
    "Text of the outlined centre-token spans of a dashboard."
    import re
    return [html.unescape(t) for t in re.findall(r'<span class="c"[^>]*>([^<]*)</span>', page)]

def test_constructs_and_shows_the_known_features(browser):
    browser.show(0)
    top = centre_tokens(browser.html.value)[:5]
    assert top == ["cat"] * 5                                    # feature 0 was built to fire on 'cat'
    browser.index.value = 1                                      # typing in the box updates the dashboard
    assert browser.feature == 1 and centre_tokens(browser.html.value)[:5] == ["dog"] * 5
    assert browser.listing.value == 1 and browser.order[browser.slider.value] == 1

def test_slider_list_and_sort(browser, data):
    browser.slider.value = 0
    first = feature_order(data, browser.sort.value)[0]
    assert browser.feature == first and browser.index.value == first
    browser.listing.value = 0
    assert browser.feature == 0 and "Feature 0<" in browser.html.value
    for label, key in [("max", "max"), ("asc", "density_asc"), ("src", "source"), ("idx", "index")]:
        browser.sort.value = key
        assert browser.feature == 0                               # re-sorting keeps the current feature
        assert [v for _, v in browser.listing.options] == feature_order(data, key)
    # never-firing features (like feature 2) come after all the firing ones, in every order
    for key in ("density_desc", "density_asc", "max", "source", "index"):
        d = data.density[[data.index_of(f) for f in feature_order(data, key)]]
        n_alive = int((d > 0).sum())
        assert bool((d[:n_alive] > 0).all()) and 2 in feature_order(data, key)[n_alive:]

def test_order_is_by_density(data):
    order = feature_order(data, "density_desc")
    d = data.density[[data.index_of(f) for f in order]]
    alive = d > 0
    assert bool((d[alive][:-1] >= d[alive][1:]).all())

def test_unknown_feature_reports_instead_of_crashing(data):
    sub = gather_feature_data(cat_sae(), tiny_store(), features=[0, 1, 5], cfg=DashboardConfig(n_top=3))
    b = FeatureBrowser(sub, tiny_tokenizer())
    b.show(0); before = b.html.value
    b.index.value = 3                                            # in range of the box, but not gathered
    assert "was not gathered" in b.status.value and b.html.value == before and b.feature == 0

def test_text_tab_and_click_through(browser):
    browser.run_text("the big dog sat on the cat")
    page = html.unescape(browser.text_html.value)
    for w in ("big", "dog", "cat"): assert f">{w}<" in page
    labels = [b.description for b in browser.feature_buttons.children]
    feats = [int(s.split()[0]) for s in labels]
    assert 0 in feats and 1 in feats                              # 'cat' and 'dog' features fire on this text
    tf = browser.last_text
    best = tf.f.max(0).values
    assert feats == sorted(feats, key=lambda f: -float(best[f]))  # strongest first
    browser.tabs.selected_index = 1
    browser.feature_buttons.children[feats.index(1)].click()
    assert browser.feature == 1 and browser.tabs.selected_index == 0
    assert centre_tokens(browser.html.value)[:5] == ["dog"] * 5
    # the text tab's activations equal the dashboard pass's on the same tokens (same masking and scaling)
    f_cat = tf.f[tf.tokens == CAT, 0]
    assert (f_cat > 0).all() and (tf.f[tf.tokens != CAT, 0] == 0).all()

def test_without_a_model_the_text_tab_is_disabled(data):
    b = FeatureBrowser(data, tiny_tokenizer())
    assert b.run_button.disabled
    with pytest.raises(ValueError, match="from_store"):
        b.run_text("the cat")

def test_text_features_html_lists_top_features():
    tok = tiny_tokenizer()
    from sae_tutorial.dashboard import TokenText
    f = torch.zeros(3, 4); f[1, 2] = 5.0; f[2, 0] = 1.0; f[2, 3] = 2.0
    page = text_features_html([0, CAT, DOG], f, TokenText(tok), top=2)
    assert "2: 5" in page and page.index("3: 2") < page.index("0: 1")   # per token, strongest first
    assert ">cat<" in page and ">dog<" in page and "endoftext" not in page   # the prefix token is not shown
