"""Interactive HTML views of a diagnostics run (plain HTML + JavaScript, no external files, no network).

* :func:`token_view` — each example's tokens, coloured by how their incoming mass reads in a chosen layer and
  head: explained away (``m̃ < τ``, blue), sink (``m̃ ≥ κ``, orange); "all heads" shades by the fraction of heads.
* :func:`head_map_view` — one example's attention map for a chosen layer and head, drawn on a canvas with the
  tokens on both axes (the per-head view of bertviz / attention-analysis, without their dependencies).

Both return an HTML fragment for :meth:`probattn.report.writer.Report.html`; the data travel as JSON inside it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

import numpy as np

__all__ = ["head_map_view", "token_view"]

_STYLE = """<style>
.pa-view{border:1px solid #ccc;padding:8px;margin:8px 0}.pa-view label{margin-right:12px;font-size:0.9em}
.pa-tokens span{display:inline-block;padding:1px 3px;margin:1px;border-radius:3px;font-family:monospace}
.pa-legend span{padding:1px 6px;margin-right:8px;border-radius:3px}
</style>"""


def _round(a: np.ndarray, digits: int = 3) -> list:
    return np.round(np.asarray(a, dtype=float), digits).tolist()


def token_view(view_id: str, models: Sequence[dict], *, threshold: float = 0.1, sink: float = 3.0) -> str:
    """``models``: ``[{"label", "tokens": [[str]] per example, "mass": [layer][example] (H, N) normalized incoming
    mass, "sinks": [layer][example] (H, N) bool}]`` (sinks as :func:`probattn.metrics.attention_sinks` found them;
    ``sink`` is the threshold the legend names)."""
    data = [{"label": m["label"], "tokens": m["tokens"],
             "mass": [[_round(e) for e in layer] for layer in m["mass"]],
             "sinks": [[np.asarray(e, dtype=int).tolist() for e in layer] for layer in m["sinks"]]} for m in models]
    payload = json.dumps({"models": data, "tau": threshold, "kappa": sink}).replace("</", "<\\/")
    vid = html.escape(view_id)
    return _STYLE + f"""<div class="pa-view" id="{vid}">
<div><label>model <select data-k="model"></select></label><label>example <select data-k="example"></select></label>
<label>layer <input type="range" data-k="layer" min="0" value="0"> <output></output></label>
<label>head <select data-k="head"></select></label></div>
<p class="pa-legend"><span style="background:#9ecae1">explained away: m̃ &lt; {threshold:g}</span>
<span style="background:#fdae6b">sink: m̃ ≥ {sink:g}</span> (all heads: shade = fraction of heads; hover a token for
its m̃)</p><div class="pa-tokens"></div></div>
<script>(function(){{const D={payload};const root=document.getElementById("{vid}");
const q=k=>root.querySelector('[data-k="'+k+'"]');const out=root.querySelector("output");
const box=root.querySelector(".pa-tokens");
function opts(sel,items){{sel.innerHTML="";items.forEach((t,i)=>{{const o=document.createElement("option");
o.value=i;o.textContent=t;sel.appendChild(o);}});}}
function setup(){{const m=D.models[+q("model").value||0];opts(q("example"),m.tokens.map((t,i)=>"example "+i));
q("layer").max=m.mass.length-1;const H=m.mass[0][0].length;
opts(q("head"),["all heads"].concat([...Array(H).keys()].map(h=>"head "+h)));draw();}}
function draw(){{const m=D.models[+q("model").value||0],e=+q("example").value||0,l=+q("layer").value||0,
hs=+q("head").value||0;out.textContent=l;box.innerHTML="";const M=m.mass[l][e],S=m.sinks[l][e],H=M.length;
m.tokens[e].forEach((tok,j)=>{{const s=document.createElement("span");const col=M.map(r=>r[j]),sc=S.map(r=>r[j]);
let ea,sk;if(hs>0){{ea=col[hs-1]<D.tau?1:0;sk=sc[hs-1];}}else{{
ea=col.filter(v=>v<D.tau).length/H;sk=sc.reduce((a,b)=>a+b,0)/H;}}
if(sk>0&&sk>=ea){{s.style.background="rgba(253,141,60,"+(0.25+0.75*sk)+")";s.className="pa-sink";}}
else if(ea>0){{s.style.background="rgba(107,174,214,"+(0.25+0.75*ea)+")";s.className="pa-ea";}}
s.textContent=tok;s.title="m̃ per head: "+col.map(v=>v.toFixed(3)).join(" ");box.appendChild(s);}});}}
opts(q("model"),D.models.map(m=>m.label));root.querySelectorAll("select,input").forEach(el=>
el.addEventListener("input",el===q("model")?setup:draw));setup();}})();</script>"""


def head_map_view(view_id: str, models: Sequence[dict]) -> str:
    """``models``: ``[{"label", "tokens": [str], "maps": [layer] (H, N, N)}]`` (one example per model)."""
    data = [{"label": m["label"], "tokens": m["tokens"], "maps": [_round(layer) for layer in m["maps"]]}
            for m in models]
    payload = json.dumps({"models": data}).replace("</", "<\\/")
    vid = html.escape(view_id)
    return _STYLE + f"""<div class="pa-view" id="{vid}">
<div><label>model <select data-k="model"></select></label>
<label>layer <input type="range" data-k="layer" min="0" value="0"> <output></output></label>
<label>head <select data-k="head"></select></label></div><canvas width="640" height="640"></canvas></div>
<script>(function(){{const D={payload};const root=document.getElementById("{vid}");
const q=k=>root.querySelector('[data-k="'+k+'"]');const out=root.querySelector("output");
const cv=root.querySelector("canvas"),cx=cv.getContext("2d");
function opts(sel,items){{sel.innerHTML="";items.forEach((t,i)=>{{const o=document.createElement("option");
o.value=i;o.textContent=t;sel.appendChild(o);}});}}
function setup(){{const m=D.models[+q("model").value||0];q("layer").max=m.maps.length-1;
opts(q("head"),["mean of heads"].concat([...Array(m.maps[0].length).keys()].map(h=>"head "+h)));draw();}}
function draw(){{const m=D.models[+q("model").value||0],l=+q("layer").value||0,h=+q("head").value||0;
out.textContent=l;const T=m.tokens,N=T.length,L=m.maps[l],pad=110,c=Math.max(4,Math.floor((cv.width-pad)/N));
cx.clearRect(0,0,cv.width,cv.height);cx.font="10px monospace";cx.fillStyle="#000";
for(let i=0;i<N;i++){{cx.textAlign="right";cx.fillText(T[i].slice(0,14),pad-4,pad+i*c+c*0.75);
cx.save();cx.translate(pad+j2(i)+c*0.75,pad-4);cx.rotate(-Math.PI/2);cx.textAlign="left";
cx.fillText(T[i].slice(0,14),0,0);cx.restore();
for(let j=0;j<N;j++){{let v=0;if(h>0)v=L[h-1][i][j];else{{for(const r of L)v+=r[i][j];v/=L.length;}}
cx.fillStyle="rgba(8,81,156,"+Math.min(1,v)+")";cx.fillRect(pad+j*c,pad+i*c,c-1,c-1);}}cx.fillStyle="#000";}}
function j2(i){{return i*c;}}}}
opts(q("model"),D.models.map(m=>m.label));root.querySelectorAll("select,input").forEach(el=>
el.addEventListener("input",el===q("model")?setup:draw));setup();}})();</script>"""
