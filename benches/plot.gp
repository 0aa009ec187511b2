# Store size against images added, from the sizes.dat that benches/report.py
# writes. Called by benches/run.sh:
#   gnuplot -e "dat='OUT/sizes.dat'; out='OUT/sizes'; ttl='...'" benches/plot.gp
# Columns: seq image gzip_MB puzzle_blobs_MB puzzle_store_MB file_dedup_MB casync_MB
# (nan where a series was not measured: gnuplot leaves it out).

if (!exists("dat")) dat = 'sizes.dat'
if (!exists("out")) out = 'sizes'
if (!exists("ttl")) ttl = 'store size vs images added'

set title ttl noenhanced
set xlabel 'images added (in build order)'
set ylabel 'MB (1e6 bytes)'
set key top left noenhanced box opaque
# headroom above the highest line for the key
set offsets 0, 0, graph 0.35, 0
set grid ytics
set xtics rotate by 60 right font ',8' noenhanced
set yrange [0:*]
set datafile missing 'nan'

plot_all = "plot dat using 1:3:xtic(2) with linespoints lw 2 pt 7 ps 0.6 lc rgb '#c03030' title 'gzip layers (distinct, as pulled)', \
  '' using 1:4 with linespoints lw 2 pt 5 ps 0.6 lc rgb '#1060c0' title 'puzzle blobs', \
  '' using 1:5 with lines lw 1.5 dt 2 lc rgb '#1060c0' title 'puzzle incl. sled index', \
  '' using 1:7 with linespoints lw 2 pt 9 ps 0.6 lc rgb '#209030' title 'casync store + .caidx', \
  '' using 1:6 with lines lw 1.5 dt 3 lc rgb '#606060' title 'whole-file dedup (uncompressed)'"

set terminal svg size 1100,650 dynamic font 'sans,12'
set output out.'.svg'
eval plot_all

set terminal pngcairo size 1100,650 font 'sans,10'
set output out.'.png'
eval plot_all
set output
