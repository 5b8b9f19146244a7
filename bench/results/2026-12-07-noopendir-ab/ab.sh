#!/bin/bash
# A/B: old vs new daemon binary; warm/cold ls -lR, rm -rf, big dirs.
# Kept as the record of how runs-*.txt were taken (scratch paths as used):
# ptfs-old = e9cc1d8^ and ptfs-new = e9cc1d8 release builds, tree.tar =
# bench/run.sh's small tree (/usr/include without boost, /usr/share/doc),
# SOURCE a fresh loop-mounted ext4; REPS alternating repetitions.
set -u
L=/var/tmp/lead; IMG=$L/img; SRC=$L/srcimg; MNT=$L/mntab
mkdir -p $SRC $MNT
if ! mountpoint -q $SRC; then truncate -s 4G $IMG; mkfs.ext4 -q -F $IMG; mount -o loop $IMG $SRC
  mkdir $SRC/big; for d in 0 1 2 3; do mkdir $SRC/big/d$d; (cd $SRC/big/d$d && seq -f "file-%06g-abcdefgh" 1 10000 | xargs touch); done
fi
old=$(cat /sys/module/fuse/parameters/enable_uring); echo Y > /sys/module/fuse/parameters/enable_uring
t() { local t0=$(date +%s.%N); "$@" >/dev/null; local t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
for rep in $(seq ${REPS:-5}); do
 for b in old new; do
  rm -rf $SRC/t; tar -xf /var/tmp/exp/tree.tar -C $SRC --one-top-level=t
  sync
  $L/ptfs-$b -f --stats $L/ab-$b.json $SRC $MNT > $L/ab-$b.log 2>&1 & pid=$!
  for i in $(seq 100); do mountpoint -q $MNT && break; sleep 0.05; done
  echo 3 > /proc/sys/vm/drop_caches
  cb=$(t ls -lR $MNT/big)
  ct=$(t ls -lR $MNT/t)
  t ls -lR $MNT/t >/dev/null
  wt=$(t ls -lR $MNT/t)
  wb=$(t ls -lR $MNT/big)
  rr=$(t rm -rf $MNT/t)
  kill -USR1 $pid; sleep 0.3
  umount $MNT || umount -l $MNT; wait $pid
  echo "$rep $b coldbig $cb coldtree $ct warmtree $wt warmbig $wb rmrf $rr"
 done
done
echo $old > /sys/module/fuse/parameters/enable_uring
