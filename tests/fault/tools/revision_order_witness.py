#!/usr/bin/env python3
"""Looks for a linearization of one key's saved history (tests/fault/fixtures/*.txt, or the
target/tmp/history-*.txt a fault run writes) in the store's own order: every write that
answered with a revision takes effect in revision order, reads and refusals go in the gaps, and
a write of unknown outcome is used only where a refusal or an absent read needs one.

Usage: python3 tests/fault/tools/revision_order_witness.py HISTORY

A diagnostic for histories the checker leaves undecided, not a checker: it prints the unknown
writes it had to use and whether the placement is consistent. It does not handle reads of
values written by operations of unknown outcome. Its "feasible True" is evidence, not proof:
it checks each operation's window against the bounds, not every combination.
"""
import re,sys
ops=[]
for line in open(sys.argv[1]):
    m=re.match(r'\s*(\d+)\s+(\d+) client\s+(\d+) (.*) -> (.*)$',line.rstrip())
    ops.append(dict(inv=int(m[1]),ret=int(m[2]),c=int(m[3]),inp=m[4].strip(),out=m[5].strip()))
W=[]
for i,o in enumerate(ops):
    m=re.search(r'Written \{ revision: (\d+) \}',o['out'])
    if m: W.append((int(m[1]),i))
W.sort(); n=len(W)
idx={r:k for k,(r,i) in enumerate(W)}
lb=[ops[i]['inv'] for r,i in W]; ub=[ops[i]['ret'] for r,i in W]
isdel=[ 'Delete' in ops[i]['inp'] for r,i in W]
def state(k): # state after W_k: 0 absent else revision
    return 0 if isdel[k] else W[k][0]
INF=1<<64
def gap_ok(k,o,lbs,ubs):
    # op o placed after W_k (k=-1: before all) and before W_{k+1}
    lo = lbs[k] if k>=0 else 0
    hi = ubs[k+1] if k+1<n else INF
    return lo<=o['ret'] and o['inv']<=hi and lo<=hi
def tighten(k,o):
    if k>=0: ub[k]=min(ub[k],o['ret'])
    if k+1<n: lb[k+1]=max(lb[k+1],o['inv'])
def propagate():
    for k in range(1,n): lb[k]=max(lb[k],lb[k-1])
    for k in range(n-2,-1,-1): ub[k]=min(ub[k],ub[k+1])
    return all(lb[k]<=ub[k] for k in range(n))
# definite: reads of a revision
for o in ops:
    m=re.search(r'Read\(Some\(\((\d+), (\d+)\)\)\)',o['out'])
    if m and int(m[2]) not in idx:
        sys.exit(f"a read saw revision {m[2]}, which no acknowledged write got: not handled here")
    if m: tighten(idx[int(m[2])],o)
print("after reads feasible:",propagate())
unk_del=sorted(o['inv'] for o in ops if o['out']=='Unknown' and o['inp']=='Delete')
unk_put=sorted(o['inv'] for o in ops if o['out']=='Unknown' and o['inp'].startswith(('Put','Cas')))
# disjunctive ops, in order of invocation: choose the latest feasible gap? try earliest-compatible
fails=0
for o in sorted(ops,key=lambda o:o['inv']):
    need=None
    if o['out'] in ('Read(None)','DeleteRefused'): need='absent'
    elif o['out']=='CasRefused': need=('not',int(re.search(r'expect: (\d+)',o['inp'])[1]))
    else: continue
    choices=[]
    for k in range(-1,n):
        if not gap_ok(k,o,lb,ub): continue
        st = 0 if k<0 else state(k)
        if need=='absent':
            if st==0: choices.append((k,None))
            else:
                nxt_ok = k+1>=n or not isdel[k+1] and not ('Cas' in ops[W[k+1][1]]['inp'] and 'expect: 0' not in ops[W[k+1][1]]['inp'])
                if nxt_ok and any(t<=o['ret'] for t in unk_del): choices.append((k,'ud'))
        else:
            if st!=need[1]: choices.append((k,None))
            elif any(t<=o['ret'] for t in unk_del+unk_put): choices.append((k,'uw'))
    if not choices:
        print("NO GAP for", o); fails+=1; continue
    # prefer a choice without unknown writes, the one that tightens least: pick gap containing o's interval
    choices.sort(key=lambda c:(c[1] is not None,))
    saved=(lb[:],ub[:])
    for k,u in choices:
        tighten(k,o)
        if propagate():
            if u: print("uses unknown",u,"gap",k,"next",ops[W[k+1][1]]['inp'] if k+1<n else None,o)
            break
        lb[:],ub[:]=saved[0][:],saved[1][:]
    else:
        print("no consistent gap for",o); fails+=1
print("fails",fails,"feasible",propagate())
