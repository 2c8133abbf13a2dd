#!/bin/sh
# Removes old temporary files (contains deliberate lint findings for the demo).
dir=$1
for f in $(ls $dir); do
  rm $dir/$f
done
